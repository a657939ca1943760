"""Label exposure for online class-incremental learning: seen-class mask and position <-> class mapping.

Si-Blurry protocol (Moon et al., ICCV 2023, arXiv 2308.09303; reference moonjunyyy/Si-Blurry@c4024ce
``methods/er_baseline.py``): classes are exposed in first-appearance order before the incoming batch's first update;
head row ``k`` belongs to the ``k``-th exposed class and logits of unexposed rows are masked to ``-inf``.
"""

from __future__ import annotations

import torch

__all__ = ["LabelExposure"]


class LabelExposure:
    """Mixin: ``exposed`` classes, ``class_to_pos`` and the seen mask over ``num_classes`` head positions."""

    num_classes: int
    exposed: list[int]
    class_to_pos: torch.Tensor

    def init_exposure(self, num_classes: int) -> None:
        """Reset the bookkeeping for a head of ``num_classes`` positions."""
        self.num_classes = int(num_classes)
        self.exposed = []
        self.class_to_pos = torch.full((self.num_classes,), -1, dtype=torch.long)

    def expose(self, y: torch.Tensor) -> None:
        """Append the unseen labels of ``y`` to ``exposed`` in first-appearance order (before any update)."""
        for c in y.detach().cpu().tolist():
            if not 0 <= c < self.num_classes:
                raise ValueError(f"label {c} outside [0, {self.num_classes}) (num_classes={self.num_classes})")
            if self.class_to_pos[c] < 0:
                self.class_to_pos[c] = len(self.exposed)
                self.exposed.append(c)

    def seen_mask(self) -> torch.Tensor:
        """``(num_classes,)`` additive mask over positions: 0 for exposed positions, -inf beyond."""
        m = torch.full((self.num_classes,), float("-inf"), device=self.device)
        m[: len(self.exposed)] = 0.0
        return m

    @property
    def mb_y_pos(self) -> torch.Tensor:
        """Current labels as exposed positions (head rows)."""
        return self.class_to_pos.to(self.mb_y.device)[self.mb_y]

    def positions_to_classes(self, logits_pos: torch.Tensor) -> torch.Tensor:
        """Re-index ``(B, num_classes)`` position logits to original class ids (-inf for unexposed classes)."""
        out = logits_pos.new_full(logits_pos.shape, float("-inf"))
        n = len(self.exposed)
        if n:
            idx = torch.tensor(self.exposed, device=logits_pos.device)
            out[:, idx] = logits_pos[:, :n]
        return out
