"""slostream: a streaming SLO daemon."""

__version__ = "0.1.0"
