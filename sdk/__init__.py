"""runstream: the client a training script imports (``import runstream``)."""

__version__ = "0.1.0"
