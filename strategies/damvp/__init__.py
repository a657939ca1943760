"""DAM-VP: diversity-aware meta visual prompting (Huang et al., CVPR 2023).

``config.py`` (``DAMVPConfig``), ``strategy.py`` (the ``damvp`` strategy), and what only DAM-VP uses: ``pixel.py``
(pad prompts), ``clustering.py`` (diversity clustering and routing), ``reptile.py`` (meta-prompt training),
``model.py`` (featurizers and head adapters).
"""

from ctta.strategies.damvp.config import DAMVPConfig
from ctta.strategies.damvp.strategy import DAMVP, warmup_cosine_lr

__all__ = ["DAMVP", "DAMVPConfig", "warmup_cosine_lr"]
