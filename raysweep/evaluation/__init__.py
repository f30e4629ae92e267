"""Evaluation: metrics as flat ``{name: float}`` dicts, ready for tables and MLflow."""
