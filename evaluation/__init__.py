"""Scoring defenses and models: the competition harness (``test.py`` runs it), benchmark runs,
reports, plots, tuning, adaptive attacks, the metric's, denoiser's and perturbation
detector's evaluations, memory, fidelity and leak probes."""
