"""Task metrics against reference outputs (translation, summarisation), as CustomPOs reports them.

A reference file is JSONL, one row per test item: `prompt` (a string or a message list),
`reference` (a string, or a list of strings when there are several references per item) and
optionally `source` (the text to translate, for COMET; default: the prompt's text). Scores are
computed by the libraries that define them, not re-implemented: sacrebleu's corpus BLEU and
chrF (its defaults: 13a tokenisation, chrF with char order 6 and beta 2), rouge-score's ROUGE
F-measures averaged over items (rouge1, rouge2, rougeL, rougeLsum; no stemming, as Hugging
Face `evaluate`'s default), and with the optional extras COMET (`unbabel-comet`,
Unbabel/wmt22-comet-da) and BERTScore (`bert-score`). All scores are on a 0-100 scale.
"""

from __future__ import annotations

from pathlib import Path

from pride.errors import PrideError
from pride.io import read_jsonl_numbered

METRICS = ("bleu", "chrf", "rouge", "comet", "bertscore")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def load_references(path: str | Path) -> list[dict]:
    """Rows with `prompt`, `references` (a list, the same length on every row) and `source`."""
    rows = []
    for n, row in read_jsonl_numbered(Path(path)):
        where = f"{path} line {n}"
        if not isinstance(row, dict):
            raise PrideError(f"{where}: expected an object with 'prompt' and 'reference'")
        prompt, ref = row.get("prompt"), row.get("reference")
        if not isinstance(prompt, (str, list)) or not prompt:
            raise PrideError(f"{where}: field 'prompt': expected a string or a message list")
        refs = [ref] if isinstance(ref, str) else ref
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise PrideError(f"{where}: field 'reference': expected a string or a list of strings")
        if rows and len(refs) != len(rows[0]["references"]):
            raise PrideError(f"{where}: field 'reference': {len(refs)} references, line 1 has "
                             f"{len(rows[0]['references'])} (every item needs the same number)")
        text = prompt if isinstance(prompt, str) else "\n".join(m.get("content", "") for m in prompt)
        rows.append({"prompt": prompt, "references": refs, "source": row.get("source", text)})
    if not rows:
        raise PrideError(f"{path}: no rows")
    return rows


def score(hypotheses: list[str], rows: list[dict], metrics: list[str]) -> dict:
    """Corpus scores of `hypotheses` against the rows' references."""
    if len(hypotheses) != len(rows):
        raise PrideError(f"task metrics: {len(hypotheses)} outputs for {len(rows)} references")
    streams = [list(s) for s in zip(*(r["references"] for r in rows))]  # sacrebleu: one list per reference set
    out: dict = {"n": len(rows)}
    for m in metrics:
        if m == "bleu":
            import sacrebleu

            out["bleu"] = sacrebleu.corpus_bleu(hypotheses, streams).score
        elif m == "chrf":
            import sacrebleu

            out["chrf"] = sacrebleu.corpus_chrf(hypotheses, streams).score
        elif m == "rouge":
            from rouge_score import rouge_scorer

            scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
            per = [scorer.score_multi(r["references"], h) for h, r in zip(hypotheses, rows)]
            out.update({t: 100 * sum(p[t].fmeasure for p in per) / len(per) for t in ROUGE_TYPES})
        elif m == "comet":
            out["comet"] = _comet(hypotheses, rows)
        elif m == "bertscore":
            out["bertscore"] = _bertscore(hypotheses, rows)
        else:
            raise PrideError(f"task metric {m!r} unknown (available: {', '.join(METRICS)})")
    return out


def _comet(hypotheses: list[str], rows: list[dict]) -> float:
    try:
        from comet import download_model, load_from_checkpoint
    except ImportError:
        raise PrideError("task metric 'comet' needs the unbabel-comet package (pip install unbabel-comet)") from None
    model = load_from_checkpoint(download_model("Unbabel/wmt22-comet-da"))
    data = [{"src": r["source"], "mt": h, "ref": r["references"][0]} for h, r in zip(hypotheses, rows)]
    return 100 * float(model.predict(data, batch_size=16, progress_bar=False).system_score)


def _bertscore(hypotheses: list[str], rows: list[dict]) -> float:
    try:
        from bert_score import score as bert_score
    except ImportError:
        raise PrideError("task metric 'bertscore' needs the bert-score package (pip install bert-score)") from None
    _, _, f1 = bert_score(hypotheses, [r["references"] for r in rows], lang="en", verbose=False)
    return 100 * float(f1.mean())
