"""rlvr: reinforcement-learning post-training of LLMs with verifiable rewards."""

__version__ = "0.1.0"
