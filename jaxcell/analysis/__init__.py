"""Post-hoc analysis of per-image predictions: ensembles, confidence triage and calibration (numpy only)."""
