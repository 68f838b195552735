"""Rerank stages: reorder and cut the ranked candidates (top-N, diversity, boosts, …)."""
