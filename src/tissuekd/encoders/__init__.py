"""Frozen image encoders: timm models by name, pathology presets, local weights, feature extraction."""
