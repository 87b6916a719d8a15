"""sparsecircuits: train weight-sparse transformers on Python code and extract their circuits."""

__version__ = "0.1.0"
