"""Unsupervised histology baselines the students are compared against."""
