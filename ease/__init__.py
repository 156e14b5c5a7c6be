"""EASE Companion: asymmetric auxiliary losses for early-exit transformers, reproducibly.

Public surface: `RunConfig`, `run`, `load_results` (plus the modules data, model, losses,
exits, train, results, grid, pipeline, analysis, decode and stats for finer use).
"""
from ease.config import DOC_THRESHOLDS, FINE_THRESHOLDS, RunConfig
from ease.results import load_histories, load_results, load_sweeps
from ease.train import load_checkpoint, run

__all__ = ["RunConfig", "run", "load_results", "load_sweeps", "load_histories", "load_checkpoint",
           "DOC_THRESHOLDS", "FINE_THRESHOLDS"]
