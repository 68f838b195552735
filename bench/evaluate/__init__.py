"""Offline quality of the served recommendations against classical baselines (`make evaluate`)."""
