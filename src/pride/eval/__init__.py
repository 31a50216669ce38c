"""Evaluation: serving, judges, MT-Bench, AlpacaEval 2, Arena-Hard, Open LLM, reports."""
