"""Metrics, delegating to scikit-learn / scipy wherever they already exist."""
