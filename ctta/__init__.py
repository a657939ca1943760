"""ctta: continual learning and test-time adaptation of prompt-based vision models (Avalanche strategies)."""

import warnings

# Avalanche imports qpsolvers, which warns when no optional QP solver is installed (unused by ctta).
warnings.filterwarnings("ignore", message=".*no QP solver.*")

__version__ = "0.1.0"
