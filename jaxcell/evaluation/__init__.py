"""Evaluation of trained models: classification metrics (see `metrics`)."""
