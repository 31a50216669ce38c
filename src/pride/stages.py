"""The stages pride runs, in one registry: `pride <kind> CONFIG` and a recipe's `type: <kind>`
both come here. Runners are imported when a stage runs, so `pride --help` stays fast."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageKind:
    help: str
    runner: str  # "module:function", called with the stage's Config
    command: bool = True  # a `pride <kind> CONFIG` subcommand (eval has its own)
    iterative: bool = False  # online rounds: the model is the last iteration's
    trains: bool = True  # leaves a model
    policy: bool = True  # its model is a policy, what the next stage starts from (a reward model is not)
    defaults: dict = field(default_factory=dict)  # config under the stage's own sections (recipes)

    def run(self, cfg):
        module, name = self.runner.split(":")
        return getattr(importlib.import_module(module), name)(cfg)


STAGES: dict[str, StageKind] = {
    "sft": StageKind("supervised fine-tuning (packing, assistant-only loss)", "pride.train.sft:run_sft"),
    "dpo": StageKind("offline preference training (DPO family, precomputed reference log-probs)",
                     "pride.train.preference:run_preference"),
    "kto": StageKind("unpaired feedback: KTO on rows labelled desirable or not (TRL's KTOTrainer)",
                     "pride.train.unpaired:run_unpaired"),
    "rm": StageKind("reward model: Bradley-Terry on preference pairs (TRL's RewardTrainer)",
                    "pride.train.reward:run_reward", policy=False),
    "online": StageKind("online DPO / SPPO: sample K per prompt, judge, pair, train, repeat",
                        "pride.online.loop:run_online", iterative=True),
    "sppo": StageKind("SPPO self-play: online rounds with win probabilities and the SPPO loss",
                      "pride.online.loop:run_online", command=False, iterative=True,
                      defaults={"online": {"pairs": "sppo"}, "preference": {"loss_type": "sppo"}}),
    "eval": StageKind("benchmarks: MT-Bench, AlpacaEval 2, Arena-Hard, Open LLM, task metrics",
                      "pride.eval.run:run_eval", command=False, trains=False),
}
