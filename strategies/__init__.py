"""Avalanche strategies, one file per method; each registers in ``ctta.registry.STRATEGIES``."""
