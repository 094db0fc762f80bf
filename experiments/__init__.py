"""Ablation tables (``python -m experiments list|run|show``) on the search engine, and the
data-set separability check."""
