"""Helpers the Snakefile imports: experiment loading, rule params and code fingerprints."""
