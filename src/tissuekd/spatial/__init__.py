"""Spatial layout of cells: train/test strips with their buffer, and the neighbourhood radius."""
