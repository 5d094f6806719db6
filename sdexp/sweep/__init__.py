"""Sweeps: Optuna studies over run configs (definitions, trials, storage, best, reports)."""
