"""``python -m ctta`` (also what ``torchrun -m ctta`` runs)."""

import sys

from ctta.runner.cli import main

sys.exit(main())
