"""Synthetic tasks that run anywhere: small, verifiable, and generated deterministically from a seed."""
