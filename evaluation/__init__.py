"""Scoring defenses: the competition harness (``test.py`` runs it), benchmark runs, reports,
plots, tuning, the perturbation detector's evaluation, memory and leak probes."""
