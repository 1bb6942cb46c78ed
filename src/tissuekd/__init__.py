"""tissuekd: distil expensive tissue measurements into models that need only cheap images."""

__version__ = "0.1.0"
