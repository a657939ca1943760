"""Datasets, transforms and adapters to Avalanche datasets."""
