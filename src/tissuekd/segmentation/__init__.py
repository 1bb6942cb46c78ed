"""Segmentation study: a multiplexed-fluorescence teacher distilled into nuclear-channel U-Nets."""
