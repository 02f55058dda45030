"""Shared helpers below every stage: atomic writes, the learning-rate schedule, the optimiser."""
