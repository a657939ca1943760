"""Datasets, transforms and adapters to Avalanche datasets; ``ctta.data.catalogue`` names every dataset a scenario
reads (its folder under ``scenario.root``, how to get it, and the loader that builds it)."""
