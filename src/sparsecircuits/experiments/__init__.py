"""Experiments built on the pipeline: the one-command demo, the sparse-vs-dense frontier, and their reports."""
