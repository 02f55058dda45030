"""Offline and closed-loop evaluation, and the results tables."""
