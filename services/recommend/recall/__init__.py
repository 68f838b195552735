"""Recall stages: each proposes item ids for a request, up to its quota."""
