"""Judges behind one interface: `judge(prompts, candidates) -> [Judgement]`.

A Judgement has one score per candidate and, for pairwise judges (PairRM, LLM), the K x K
matrix M with M[i][j] > 0 when i beats j (antisymmetric; scores are then the SPPO row
scores s_i = mean_j (M[i][j] - M[j][i])).
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from pride.config import JudgeSettings
from pride.errors import PrideError
from pride.model_dirs import check_not_adapter, check_tokenizer_dir, check_weights_dir


@dataclass
class Judgement:
    scores: list[float]
    matrix: list[list[float]] | None = None
    verdicts: list[list[float | None]] | None = None  # llm judge: V[i][j], i shown as A against j as B


class Judge(Protocol):
    def judge(self, prompts: list[list[dict]], candidates: list[list[str]]) -> list[Judgement]: ...


def prompt_text(messages: list[dict]) -> str:
    """The text a scalar or pairwise judge sees: the last user turn (earlier turns as context)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return "\n".join(users[-1:]) if len(users) <= 1 else "\n".join(f"USER: {u}" for u in users)


def chat_template_text(fmt, messages: list[dict]) -> str:
    """The prompt as SPPO's scripts/rank.py shows it to PairRM: the conversation with the answer
    "None", rendered by the policy's chat template, cut at the first "None" (so a prompt that
    itself contains "None" is cut there too, as theirs is)."""
    text, _ = fmt.render([*messages, {"role": "assistant", "content": "None"}])
    return text.split("None")[0]


def check_judgement(j: "Judgement", k: int, where: str) -> None:
    """Scores (and matrix entries) must be finite real numbers, K of them: else the row is named."""
    if len(j.scores) != k:
        raise PrideError(f"{where}: the judge gave {len(j.scores)} scores for {k} responses")
    values = [("score", i, v) for i, v in enumerate(j.scores)]
    values += [("matrix entry", f"{a},{b}", v) for a, row in enumerate(j.matrix or []) for b, v in enumerate(row)]
    for what, i, v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise PrideError(f"{where}: {what} {i} is {v!r}; a judge must give finite numbers")
    j.scores = [float(v) for v in j.scores]


def row_scores(matrix: list[list[float]]) -> list[float]:
    k = len(matrix)
    return [sum(matrix[i][j] - matrix[j][i] for j in range(k)) / k for i in range(k)]


class FunctionJudge:
    """A Python function `module:function(prompt: str, response: str) -> float` (rule rewards)."""

    def __init__(self, spec: str | None, path: str | None = None):
        if not spec and path:  # a path, and no type: the judge it names is a model, not a function
            raise PrideError(f"online.judge.path={path} names a model to judge with: set online.judge.type "
                             "(reward_model for a reward model, or a recipe's stage:NAME; pairrm for PairRM); "
                             "the default type, function, takes online.judge.function")
        if not spec or ":" not in spec:
            raise PrideError("online.judge.function must be 'module:function' (e.g. mypackage.rewards:score)")
        module, name = spec.split(":", 1)
        try:
            self.fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise PrideError(f"online.judge.function={spec}: cannot import ({e})") from None

    def judge(self, prompts, candidates):
        return [Judgement([self.fn(prompt_text(p), c) for c in cands]) for p, cands in zip(prompts, candidates)]


class RewardModelJudge:
    """A local sequence-classification directory (`pride rm`'s model/, or any reward model with a
    chat template): each answer scored as `pride rm` trains, through `pride.scores` (the
    directory's chat template, its model_max_length and truncation_side, the head at the last
    token)."""

    def __init__(self, s: JudgeSettings, device):
        from pride.scores import load_reward_model

        self.tok, self.fmt, self.model = load_reward_model(s.path, device)
        saved = self.tok.model_max_length
        self.max_length = s.max_length or (saved if saved and saved < 10**7 else 2048)  # HF's "no limit": 1e30
        self.side = self.tok.truncation_side
        self.s, self.device = s, device

    @torch.no_grad()
    def judge(self, prompts, candidates):
        from pride.scores import conversation_ids, score_conversations

        ids = [conversation_ids(self.fmt, p, c, self.max_length, self.side)[0]
               for p, cands in zip(prompts, candidates) for c in cands]
        scores = score_conversations(self.model, ids, self.tok.pad_token_id, self.s.batch_size, self.device)
        out, at = [], 0
        for cands in candidates:
            out.append(Judgement(scores[at:at + len(cands)]))
            at += len(cands)
        return out


def role_lines(messages: list[dict]) -> str:
    """The prompt as LIONs' gen_preference_pairs.py shows it to PairRM (_format_single_chat)."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages).strip()


def prompt_shower(prompt_format: str, fmt):
    """messages -> the text PairRM is shown, per `online.judge.prompt_format`."""
    if prompt_format == "chat_template":
        return lambda messages: chat_template_text(fmt, messages)
    return role_lines if prompt_format == "role_lines" else prompt_text


class PairRMJudge:
    def __init__(self, s: JudgeSettings, device, fmt=None):
        from pride.online.pairrm import PairRM

        self.rm = PairRM(s.path, device=device, batch_size=s.batch_size)
        self.show = prompt_shower(s.prompt_format, fmt)

    def judge(self, prompts, candidates):
        out = []
        for p, cands in zip(prompts, candidates):
            m = self.rm.compare_all(self.show(p), cands)
            out.append(Judgement(row_scores(m), m))
        return out


PAIRWISE_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. Choose the assistant that follows the user's instructions and answers "
    "the user's question better. Avoid any position bias, do not let the length of the responses influence your "
    "evaluation, and be as objective as possible. After a short explanation, output your final verdict strictly "
    'in this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
    "\n\n[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]"
    "\n\n[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)
VERDICT = re.compile(r"\[\[([ABC])\]\]")


class LLMJudge:
    """OpenAI-compatible chat endpoints; every ordered pair is judged, so both orders count. The
    K x (K-1) requests of a batch's prompts go out `concurrency` at a time (prompt p to server
    p mod the servers' count); each verdict is kept by its ordered pair, so the result does not
    depend on the order in which they come back."""

    def __init__(self, s: JudgeSettings):
        from pride.chat_client import ChatClient
        from pride.config import urls

        self.clients = [ChatClient(u, s.model, s.api_key_env, connections=s.concurrency) for u in urls(s.url)]
        self.concurrency = s.concurrency

    def verdict(self, question: str, a: str, b: str, server: int = 0) -> float | None:
        """1 (A better), -1 (B), 0 (a tie), or None: the answer holds no verdict (counted as a tie in
        the matrix, kept as None in `verdicts` so a judge that never decides is told from real ties)."""
        text = self.clients[server % len(self.clients)].text(
            [{"role": "user", "content": PAIRWISE_PROMPT.format(question=question, a=a, b=b)}], temperature=0,
            max_tokens=1024)
        found = VERDICT.findall(text)
        return {"A": 1.0, "B": -1.0}.get(found[-1], 0.0) if found else None

    def judge(self, prompts, candidates):
        from pride.chat_client import map_concurrently

        pairs = [(p, i, j) for p, cands in enumerate(candidates) for i in range(len(cands))
                 for j in range(len(cands)) if i != j]
        questions = [prompt_text(p) for p in prompts]
        found = map_concurrently(lambda t: self.verdict(questions[t[0]], candidates[t[0]][t[1]],
                                                        candidates[t[0]][t[2]], server=t[0]),
                                 pairs, self.concurrency)
        v = dict(zip(pairs, found))
        out = []
        for p, cands in enumerate(candidates):
            k = len(cands)
            m = [[0.0 if i == j else ((v[p, i, j] or 0.0) - (v[p, j, i] or 0.0)) / 2 for j in range(k)]
                 for i in range(k)]
            verdicts = [[None if i == j else v[p, i, j] for j in range(k)] for i in range(k)]
            out.append(Judgement(row_scores(m), m, verdicts))
        return out


def check_judge(s: JudgeSettings) -> None:
    """What can be checked before any sampling: the settings the judge type needs, its model
    directory present, its function importable (a bad judge is found before round 1's samples)."""
    if s.prompt_format != "user_text" and s.type != "pairrm":
        raise PrideError(f"online.judge.prompt_format={s.prompt_format} is a PairRM input (SPPO's, LIONs'); the "
                         f"{s.type} judge is shown the user text")
    what = {"reward_model": "a local sequence-classification model directory",
            "pairrm": "a local PairRM-hf directory, e.g. llm-blender/PairRM-hf downloaded"}.get(s.type)
    if what and not s.path:
        raise PrideError(f"online.judge.type={s.type} needs online.judge.path ({what})")
    if what and not (Path(s.path).expanduser() / "config.json").is_file():
        check_not_adapter(Path(s.path).expanduser(), "online.judge.path")
        raise PrideError(f"online.judge.path={s.path}: not a model directory (no config.json there); it must be "
                         f"{what}")
    if s.type == "reward_model":
        from pride.scores import reward_tokenizer

        reward_tokenizer(s.path)
    if what:
        check_weights_dir(s.path, "online.judge.path")
        check_tokenizer_dir(s.path, "online.judge.path")
    if s.type == "function":
        FunctionJudge(s.function, s.path)
    if s.type == "llm" and (not s.url or not s.model):
        raise PrideError("online.judge.type=llm needs online.judge.url and online.judge.model")
    if s.type == "llm":
        check_reachable(s)


def check_reachable(s: JudgeSettings) -> None:
    """An llm judge's servers answer before any sampling (GET /models, with the key), so a closed
    port or a wrong address stops the run now, not after a round of samples."""
    import httpx

    from pride.chat_client import listed_models
    from pride.config import urls

    for url in urls(s.url):
        try:
            r = listed_models(url, s.api_key_env)
        except httpx.HTTPError as e:
            raise PrideError(f"online.judge.url {url}: the judge does not answer ({e})") from None
        if r.status_code in (401, 403):
            raise PrideError(f"online.judge.url {url}: GET /models answered HTTP {r.status_code}: the key in "
                             f"${s.api_key_env} is not accepted")


def make_judge(s: JudgeSettings, device, fmt=None) -> Judge:
    """`fmt`: the policy's chat format, for `prompt_format: chat_template` (PairRM only)."""
    check_judge(s)
    if s.type == "function":
        return FunctionJudge(s.function, s.path)
    if s.type == "reward_model":
        return RewardModelJudge(s, device)
    if s.type == "pairrm":
        return PairRMJudge(s, device, fmt)
    return LLMJudge(s)
