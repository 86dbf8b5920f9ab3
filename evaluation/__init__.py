"""Evaluation: the data a routed model is judged on and the statistics that judge it.

Task sources (BIG-bench ``task.json`` files and ``bigbench:<name>``, lm-eval tasks), the
multiple-choice scorer (per-choice log-likelihood, the way lm-eval computes it) and the
paired statistics (retention intervals). It sits above :mod:`router` (it scores routed
models) and below :mod:`workers` (which may draw calibration data from it); it knows
nothing of search, Ray or SQL. Modules load on first use: importing this package costs
nothing.
"""
