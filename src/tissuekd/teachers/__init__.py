"""Teachers: the neighbourhood transformer and its self-supervised (NOLAN-style) training."""
