"""ctta: continual learning and test-time adaptation of prompt-based vision models (Avalanche strategies)."""

import warnings

# Avalanche imports qpsolvers, which warns when no optional QP solver is installed (unused by ctta): that warning
# only (its text, category and module), so any other warning of any library still shows.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning, module="qpsolvers")

__version__ = "0.1.0"
