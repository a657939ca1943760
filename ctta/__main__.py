"""``python -m ctta`` (also what ``torchrun -m ctta`` runs)."""

import sys

from ctta.cli import main

sys.exit(main())
