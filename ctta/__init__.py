"""ctta: continual learning and test-time adaptation of prompt-based vision models (Avalanche strategies)."""

__version__ = "0.1.0"
