"""Sweeps: search spaces, the Ray Tune + Optuna driver, MLflow tracking, Pareto fronts."""
