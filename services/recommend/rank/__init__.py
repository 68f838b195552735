"""Rank stages: score the candidates (model inference on Triton)."""
