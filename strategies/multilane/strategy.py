"""MULTI-LANE: one lane per task beside a frozen ViT, concatenated at inference (MLCIL and CIL).

Paper: De Min et al., "Less is more: Summarizing Patch Tokens for efficient Multi-Label Class-Incremental
Learning", CoLLAs 2024 (arXiv 2405.15633). Reference: tdemin16/multi-lane@5ee982c (CC BY-NC 4.0; re-implemented,
no code copied).

Model: the frozen stream (``embed`` -> timm's own blocks, under ``no_grad``) runs once per image. Lane ``t``
is ``[cls_token ; selectors[t]]`` (no positional embedding). In block ``l`` the LN1-normed selectors summarise the
LN1-normed, detached frozen tokens (one head, scale D^-0.5), the block's own qkv/proj attend over
``[LN1(c) ; summaries]`` with the lane's prefix prompts (first ``num_prompt_layers`` blocks), the lane CLS keeps
the attention output and the selectors become ``s + LN1(s)`` (drop-and-replace), then the frozen MLP runs on the
lane. All lanes run batched on a leading axis over one frozen pass. Features: final norm of the lane CLS, optional
L2 normalisation, one shared head; concat inference takes class ``c``'s logit from the lane owning ``c``.

Training: per experience ``t`` the lane ``t`` is initialised as a copy of lane ``t-1``, a fresh Adam (no weight
decay) and a per-epoch cosine schedule are created, and the loss is masked BCE (multi-hot ``y``: logits and targets
outside ``C_t`` set to 0, mean over B x C) or CE with logits outside ``C_t`` at -inf (integer ``y``).

Options: ``drop_and_replace=False``, ``summarizer="tome"``, ``head_mode="task"``,
``pre_head_normalize``, ``normalize_input``, ``bce_reduction="task_columns"``, ``clip_grad_norm``.
Deviations: prompted blocks are "the first L_p of depth" (the reference hard-codes depth 12); the concat head is
one gather instead of a per-image loop; ``lr`` is the learning rate used (reference: base_lr x batch / 256); where
only the lane-CLS attention output is kept (drop-and-replace, ToMe) only its query is computed (exact; -16 % lane
FLOPs on COCO: +9.0 % of a ViT-B pass per lane instead of +10.6 %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from ctta.strategies.multilane.config import MultiLaneConfig
from ctta.strategies.multilane.metrics import multilane_metrics
from torch import nn

from ctta.backbones.vit import PromptedViT, _attention, block_forward
from ctta.registry import STRATEGIES
from ctta.templates.benchmark_info import benchmark_info, experience_classes
from ctta.templates.epoch import EpochTemplate
from ctta.utils import trainable_parameters

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------- model
def tome_merge(x: torch.Tensor, k: int) -> torch.Tensor:
    """ToMe bipartite soft matching, class token protected, r = floor(n/2) per round until <= ``k`` tokens.

    Each round averages every merged group (fresh unit sizes per round, like the reference). ``x``: (B, N, D);
    returns (B, N', D) whose first token is ``x[:, 0]``.
    """
    while x.shape[1] > k:
        n = x.shape[1]
        r = min(n // 2, (n - 1) // 2)
        if r <= 0:
            break
        metric = x / x.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]
        scores = a @ b.transpose(-1, -2)  # (B, Na, Nb)
        scores[:, 0] = -math.inf
        node_max, node_idx = scores.max(-1)
        order = node_max.argsort(-1, descending=True)[..., None]  # (B, Na, 1)
        unm_idx, src_idx = order[:, r:].sort(1)[0], order[:, :r]
        dst_idx = node_idx[..., None].gather(1, src_idx)
        src, dst = x[:, ::2], x[:, 1::2]
        d = x.shape[-1]
        unm = src.gather(1, unm_idx.expand(-1, -1, d))
        moved = src.gather(1, src_idx.expand(-1, -1, d))
        total = dst.scatter_add(1, dst_idx.expand(-1, -1, d), moved)
        count = torch.ones_like(dst[..., :1]).scatter_add(1, dst_idx, torch.ones_like(moved[..., :1]))
        x = torch.cat([unm, total / count], 1)
    return x


def cls_attention(blk: nn.Module, h: torch.Tensor, prefix=None) -> torch.Tensor:
    """Output of ``blk.attn`` at the first token only, ``(B, 1, D)``, for normed tokens ``h`` (B, n, D).

    Same result as ``_attention(blk, h, prefix)[:, :1]`` but the queries, attention rows and projection of the
    other tokens are skipped (their outputs are discarded by drop-and-replace). Falls back to the full attention
    for blocks with q/k normalisation, attention-output norm or gating.
    """
    attn = blk.attn
    plain = all(isinstance(getattr(attn, a, None), nn.Identity) for a in ("q_norm", "k_norm", "norm"))
    if not plain or getattr(attn, "gate", None) is not None:
        return _attention(blk, h, prefix)[:, :1]
    a, nh = attn.qkv.out_features // 3, attn.num_heads
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :1], w[:a], None if bias is None else bias[:a])  # (B, 1, A)
    k, v = F.linear(h, w[a:], None if bias is None else bias[a:]).split(a, dim=-1)  # (B, n, A) each
    if prefix is not None:
        k, v = torch.cat([prefix[0].to(k.dtype), k], 1), torch.cat([prefix[1].to(v.dtype), v], 1)
    q, k, v = (t.unflatten(-1, (nh, -1)).transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
    o = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # (B, H, 1, hd)
    return attn.proj_drop(attn.proj(o.transpose(1, 2).flatten(2)))  # (B, 1, D)


class MultiLaneModel(nn.Module):
    """Frozen ViT + T lanes + shared head.

    Args:
        backbone: a ``PromptedViT`` (or a timm ``VisionTransformer``, wrapped); frozen, kept in eval mode.
        num_classes: C_total. num_tasks: T (lanes allocated).
        num_selectors, num_prompts, num_prompt_layers: S, P, L_p.
        drop_and_replace, summarizer, tome_k, head_mode, pre_head_normalize, normalize_input: see the config.
        fast_cls_attention: compute only the lane-CLS query where the other attention outputs are discarded
            (drop-and-replace, ToMe); exact (tests compare it with the full attention).
    """

    def __init__(
        self, backbone: nn.Module, num_classes: int, num_tasks: int, *, num_selectors: int = 20,
        num_prompts: int = 20, num_prompt_layers: int = 5, drop_and_replace: bool = True,
        summarizer: str = "selectors", tome_k: int = 30, head_mode: str = "concat",
        pre_head_normalize: bool = True, normalize_input: bool = False, fast_cls_attention: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.backbone = backbone if isinstance(backbone, PromptedViT) else PromptedViT(backbone)
        vit = self.backbone.vit
        d, depth, heads = self.backbone.embed_dim, self.backbone.depth, vit.blocks[0].attn.num_heads
        _check_options(summarizer, head_mode, num_tasks, num_classes, num_prompt_layers, depth)
        s = 0 if summarizer == "tome" else num_selectors
        if summarizer == "selectors" and s < 1:
            raise ValueError("summarizer='selectors' needs num_selectors >= 1")
        self.num_classes, self.num_tasks, self.summarizer, self.tome_k = num_classes, num_tasks, summarizer, tome_k
        self.drop_and_replace, self.head_mode = drop_and_replace, head_mode
        self.pre_head_normalize, self.normalize_input = pre_head_normalize, normalize_input
        self.fast_cls_attention = fast_cls_attention
        self.selectors = nn.Parameter(nn.init.orthogonal_(torch.randn(num_tasks, s, d))) if s else None  # (T, S, D)
        self.prompts = nn.ParameterList(
            nn.Parameter(nn.init.orthogonal_(torch.randn(2, num_tasks, num_prompts, heads, d // heads)))
            for _ in range(num_prompt_layers if num_prompts else 0)
        )  # each (2, T, P, H, hd): 0 = key prefix, 1 = value prefix
        self.keys = nn.Parameter(nn.init.orthogonal_(torch.randn(num_tasks, d))) if head_mode == "task" else None
        self.head = nn.Linear(d, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("class_task", torch.full((num_classes,), -1, dtype=torch.long))  # tau(c); -1 unseen
        self.register_buffer("lane_started", torch.zeros(num_tasks, dtype=torch.bool))

    def train(self, mode: bool = True) -> MultiLaneModel:
        super().train(mode)
        self.backbone.eval()
        return self

    # -- task bookkeeping
    @torch.no_grad()
    def start_task(self, t: int, classes: Sequence[int]) -> None:
        """Register ``C_t`` for lane ``t``; on its first start copy lane ``t-1`` into lane ``t`` (``next_task``)."""
        if not 0 <= t < self.num_tasks:
            raise ValueError(f"task {t} outside the {self.num_tasks} allocated lanes (set num_tasks)")
        cls = torch.as_tensor(sorted(int(c) for c in classes), dtype=torch.long)
        if len(cls) == 0 or int(cls.max()) >= self.num_classes:
            raise ValueError(f"task {t}: class set {cls.tolist()[:10]} empty or outside [0, {self.num_classes})")
        owner = self.class_task[cls.to(self.class_task.device)]
        if ((owner >= 0) & (owner != t)).any():
            raise ValueError(f"task {t}: classes already owned by another task: {cls[(owner >= 0).cpu()].tolist()}")
        if t > 0 and not bool(self.lane_started[t]):
            for p in (self.selectors, self.keys):
                if p is not None:
                    p[t] = p[t - 1]
            for p in self.prompts:
                p[:, t] = p[:, t - 1]
        self.lane_started[t] = True
        self.class_task[cls.to(self.class_task.device)] = t

    @property
    def active_lanes(self) -> list[int]:
        return torch.nonzero(self.lane_started).flatten().tolist()

    # -- lane forward
    def lane_features(self, x: torch.Tensor, lanes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Lane features ``(T', B, D)`` for ``lanes`` and the frozen normed tokens ``(B, 1+N, D)`` (or None).

        The frozen stream runs as far as the lanes need it (all blocks unless ``drop_and_replace=False``
        in concat mode); the returned frozen tokens are ``vit.forward_features(x)`` when it ran to the end.
        """
        vit, lanes = self.backbone.vit, list(lanes)
        if self.normalize_input:
            mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            x = (x - mean) / x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            z = self.backbone.embed(x)  # (B, 1+N, D)
        u = self._init_lanes(lanes, x.shape[0], z.dtype)  # (T', B, 1+S, D)
        full = self.drop_and_replace or self.summarizer == "tome" or self.head_mode == "task"
        n_frozen = len(vit.blocks) if full else 1
        for i, blk in enumerate(vit.blocks):
            zhat = None
            if i < n_frozen:
                with torch.no_grad():
                    zhat = blk.norm1(z)  # (B, 1+N, D), detached
                    z = blk(z)
            u = self._lane_block(i, blk, u, zhat, lanes)
        feats = vit.norm(u[:, :, 0])  # (T', B, D)
        if self.pre_head_normalize:
            feats = F.normalize(feats, dim=-1)
        with torch.no_grad():
            frozen = vit.norm(z) if full else None
        return feats, frozen

    def _init_lanes(self, lanes: list[int], b: int, dtype: torch.dtype) -> torch.Tensor:
        cls = self.backbone.vit.cls_token.to(dtype).expand(len(lanes), b, 1, -1)  # (T', B, 1, D)
        if self.selectors is None:
            return cls
        sel = self.selectors[lanes].to(dtype).unsqueeze(1).expand(-1, b, -1, -1)  # (T', B, S, D)
        return torch.cat([cls, sel], 2)

    def _prefix(self, i: int, lanes: list[int], b: int):
        """Block ``i``'s prefix ``(k, v)`` for the lanes, each ``(T'B, P, D)`` (None past L_p)."""
        if i >= len(self.prompts):
            return None
        p = self.prompts[i][:, lanes].flatten(-2)  # (2, T', P, D)
        p = p.unsqueeze(2).expand(-1, -1, b, -1, -1).flatten(1, 2)  # (2, T'B, P, D)
        return p[0], p[1]

    def _attend(self, i: int, blk: nn.Module, h: torch.Tensor, lanes: list[int], cls_only: bool = False):
        """Block attention of lane tokens ``h`` (T', B, n, D) with the lanes' prefixes -> (T', B, n or 1, D).

        ``cls_only``: only the first query (the lane CLS) is computed; exact, as the other outputs are discarded.
        """
        tp, b = h.shape[:2]
        flat, prefix = h.flatten(0, 1), self._prefix(i, lanes, b)  # (T'B, n, D)
        if cls_only and self.fast_cls_attention:
            o = cls_attention(blk, flat, prefix)
        else:
            o = _attention(blk, flat, prefix)
            o = o[:, :1] if cls_only else o
        return o.unflatten(0, (tp, b))

    def _summarise(self, s_hat: torch.Tensor, zhat: torch.Tensor) -> torch.Tensor:
        """Selector summaries ``softmax_N(s_hat zhat^T / sqrt(D)) zhat`` -> (T', B, S, D)."""
        a = torch.einsum("tbsd,bnd->tbsn", s_hat, zhat.to(s_hat.dtype)) * s_hat.shape[-1] ** -0.5
        return torch.einsum("tbsn,bnd->tbsd", a.softmax(-1), zhat.to(s_hat.dtype))

    def _lane_block(self, i: int, blk: nn.Module, u: torch.Tensor, zhat, lanes: list[int]) -> torch.Tensor:
        if self.summarizer == "tome":
            merged = tome_merge(zhat, self.tome_k).to(u.dtype)  # (B, K', D), first token = frozen CLS
            o = self._attend(i, blk, merged.unsqueeze(0).expand(len(lanes), -1, -1, -1), lanes, cls_only=True)
            u = u + blk.drop_path1(blk.ls1(o))  # (T', B, 1, D)
        elif self.drop_and_replace or i == 0:
            uh = blk.norm1(u)  # (T', B, 1+S, D)
            h = torch.cat([uh[:, :, :1], self._summarise(uh[:, :, 1:], zhat)], 2)
            o = self._attend(i, blk, h, lanes, cls_only=self.drop_and_replace)  # D&R keeps o_0 only
            inter = torch.cat([o, uh[:, :, 1:]], 2) if self.drop_and_replace else o
            u = u + blk.drop_path1(blk.ls1(inter))
        else:  # no drop-and-replace, blocks >= 1: plain lane self-attention with prefixes
            flat = block_forward(blk, u.flatten(0, 1), self._prefix(i, lanes, u.shape[1]))
            return flat.unflatten(0, u.shape[:2])
        return u + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(u))))

    # -- heads
    def forward_train(self, x: torch.Tensor, t: int, reduce: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Lane ``t`` logits over all C columns ``(B, C)`` and the TaskIdentifier loss (task mode) or None.

        ``reduce=False`` returns the per-sample TaskIdentifier terms ``(B,)`` (their mean is the loss).
        """
        feats, frozen = self.lane_features(x, [t])
        aux = None
        if self.head_mode == "task":
            q = F.normalize(frozen[:, 0].detach(), dim=-1)
            aux = -(q @ F.normalize(self.keys[t], dim=-1))  # (B,)
            aux = aux.mean() if reduce else aux
        return self.head(feats[0]), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference over the started lanes ``(B, C)``; classes of no started lane get -inf."""
        lanes = self.active_lanes
        out = torch.full((x.shape[0], self.num_classes), -math.inf, device=x.device)
        if not lanes:
            return out
        feats, frozen = self.lane_features(x, lanes)
        logits = self.head(feats)  # (T', B, C)
        pos = torch.full((self.num_tasks,), -1, dtype=torch.long, device=x.device)
        pos[lanes] = torch.arange(len(lanes), device=x.device)
        seen = self.class_task >= 0  # (C,)
        if self.head_mode == "task":
            sim = F.normalize(frozen[:, 0], dim=-1) @ F.normalize(self.keys[lanes], dim=-1).T  # (B, T')
            pick = sim.argmax(-1)  # (B,)
            chosen = logits[pick, torch.arange(x.shape[0], device=x.device)]  # (B, C)
        else:
            owner = pos[self.class_task.clamp_min(0)]  # (C,) lane position owning each class
            idx = owner.view(1, 1, -1).expand(1, x.shape[0], -1)
            chosen = logits.gather(0, idx).squeeze(0)  # logit_c = W_c f_tau(c) + b_c
        return torch.where(seen, chosen.float(), out)


def _check_options(summarizer, head_mode, num_tasks, num_classes, num_prompt_layers, depth) -> None:
    if summarizer not in ("selectors", "tome"):
        raise ValueError(f"summarizer={summarizer!r}; valid: ['selectors', 'tome']")
    if head_mode not in ("concat", "task"):
        raise ValueError(f"head_mode={head_mode!r}; valid: ['concat', 'task']")
    if num_tasks < 1 or num_classes < 1:
        raise ValueError(f"need num_tasks >= 1 and num_classes >= 1, got {num_tasks}, {num_classes}")
    if not 0 <= num_prompt_layers <= depth:
        raise ValueError(f"num_prompt_layers={num_prompt_layers} outside [0, depth={depth}]")


# ------------------------------------------------------------------------------------------------- losses
def masked_bce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BCE with logits and targets outside ``mask`` (bool ``(C,)``) set to 0.

    ``"mean"`` averages over B x C_total (each masked entry adds log 2 and no gradient, so the gradient is
    scaled by |C_t| / C_total); ``"task_columns"`` averages over the B x |C_t| unmasked entries.
    """
    z = torch.where(mask, logits, torch.zeros_like(logits))  # (B, C)
    t = torch.where(mask, y.to(z.dtype), torch.zeros_like(z))
    if reduction == "mean":
        return F.binary_cross_entropy_with_logits(z, t)
    if reduction == "task_columns":
        return F.binary_cross_entropy_with_logits(z[:, mask], t[:, mask])
    raise ValueError(f"bce_reduction={reduction!r}; valid: ['mean', 'task_columns']")


def masked_ce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the logits outside ``mask`` (bool ``(C,)``) at -inf."""
    return F.cross_entropy(logits.masked_fill(~mask, -math.inf), y)


# ----------------------------------------------------------------------------------------------- strategy
@STRATEGIES.register("multilane", config=MultiLaneConfig)
class MultiLane(EpochTemplate):
    """MULTI-LANE as an Avalanche strategy: per-task epochs over one experience = one task = one lane.

    Experiences must carry ``classes_in_this_experience`` (C_t); ``experience.current_experience`` selects the
    lane. ``y`` multi-hot ``(B, C)`` -> masked BCE, ``y`` integer ``(B,)`` -> masked CE. Evaluation returns concat
    logits over the trained lanes (untrained classes at -inf).

    Args (Avalanche's, plus the fields of ``MultiLaneConfig`` as keyword arguments):
        model: a timm ViT (``num_classes=0``), a ``PromptedViT`` or a ``MultiLaneModel``. From a backbone the model
            is built with ``num_classes`` (else from the benchmark) and ``num_tasks`` lanes (else the number of
            experiences of the training stream).
        train_mb_size, train_epochs, eval_mb_size: default to the config's ``batch_size``, ``epochs``,
            ``eval_batch_size``.
        num_classes: label-space size. precision: ``ctta.utils.autocast`` precision.
    """

    config_class = MultiLaneConfig
    model_class = MultiLaneModel
    optimizer_refusal = (
        "MULTI-LANE builds a fresh Adam (no weight decay) with a per-epoch cosine schedule over the new lane for "
        "every task; set lr (and clip_grad_norm) instead"
    )
    criterion_refusal = (
        "MULTI-LANE's loss is masked BCE over the task's classes (multi-hot targets) or masked CE (class labels), "
        "plus the TaskIdentifier loss in head_mode='task'; set bce_reduction instead"
    )

    def __init__(self, *, model, **kwargs) -> None:
        reduction = kwargs.get("bce_reduction", getattr(kwargs.get("config"), "bce_reduction", "mean"))
        if reduction not in ("mean", "task_columns"):
            raise ValueError(f"bce_reduction={reduction!r}; valid: ['mean', 'task_columns']")
        super().__init__(model=model, **kwargs)
        cfg = self.cfg
        self.lr, self.bce_reduction, self.clip_grad_norm = cfg.lr, cfg.bce_reduction, cfg.clip_grad_norm
        self.scheduler = None
        self.task_id: int | None = None
        self._aux: torch.Tensor | None = None  # per-sample TaskIdentifier terms (B,) in training

    def prepare_backbone(self, model: nn.Module) -> nn.Module:
        return model if isinstance(model, PromptedViT) else PromptedViT(model)

    def ready_to_build(self) -> bool:
        return self.num_classes is not None and self.cfg.num_tasks is not None

    def build_model(self, backbone: nn.Module, experience) -> MultiLaneModel:
        cfg = self.cfg
        tasks = cfg.num_tasks or len(experience.origin_stream)
        return MultiLaneModel(
            backbone, self.class_count(), tasks,
            num_selectors=cfg.num_selectors, num_prompts=cfg.num_prompts, num_prompt_layers=cfg.num_prompt_layers,
            drop_and_replace=cfg.drop_and_replace, summarizer=cfg.summarizer, tome_k=cfg.tome_k,
            head_mode=cfg.head_mode, pre_head_normalize=cfg.pre_head_normalize, normalize_input=cfg.normalize_input,
        )  # fmt: skip

    # -- per-task set-up
    def start_experience(self) -> None:
        classes = experience_classes(self.experience)
        if not classes:
            raise ValueError(
                "MULTI-LANE trains one lane per experience and needs the task's class set: "
                "experience.classes_in_this_experience, or targets on the experience's dataset"
            )
        self.task_id = t = int(self.experience.current_experience)
        m = self.model
        if 0 <= t < m.num_tasks and bool(m.lane_started[t]):  # re-entering a lane: its class set must not change
            had = torch.nonzero(m.class_task == t).flatten().tolist()
            if had != sorted(classes):
                raise ValueError(
                    f"experience {t} brings classes {sorted(classes)[:10]} but lane {t} was trained on {had[:10]}: "
                    "one experience is one task; set classes_in_this_experience / current_experience consistently"
                )
        m.start_task(t, classes)

    def make_optimizer(self, **kwargs) -> None:
        """Fresh Adam (betas 0.9/0.999, eps 1e-8, no weight decay) + per-epoch cosine over trainable tensors."""
        params = trainable_parameters(self.model)
        self.optimizer = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, self.train_epochs))

    def _after_training_epoch(self, **kwargs) -> None:
        super()._after_training_epoch(**kwargs)
        if self.scheduler is not None:
            self.scheduler.step()

    # -- forward / loss
    def forward_train(self) -> torch.Tensor:
        logits, self._aux = self.model.forward_train(self.mb_x, self.task_id, reduce=False)  # aux (B,)
        return logits  # (B, C)

    def forward_eval(self) -> torch.Tensor:
        self._aux = None
        return self.model(self.mb_x)  # (B, C)

    def loss_inputs(self) -> dict:
        return {"mb_output": self.mb_output_local, "_aux": self._aux}

    def criterion(self) -> torch.Tensor:
        ct = self.model.class_task
        mask = (ct == self.task_id) if self.is_training else (ct >= 0)  # (C,)
        if not bool(mask.any()):
            return torch.zeros((), device=self.mb_output.device)
        y = self.mb_y
        if y.ndim == 2:
            loss = masked_bce(self.mb_output, y, mask, self.bce_reduction)
        else:
            loss = masked_ce(self.mb_output, y, mask)
        return loss + self._aux.float().mean() if self._aux is not None else loss

    def optimizer_step(self) -> None:
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(trainable_parameters(self.model), self.clip_grad_norm)
        super().optimizer_step()

    # -- run integration
    def eval_after_experience(self, bench, i: int):
        """End-of-task evaluation: the cumulative seen-class test set (MLCIL) or test experiences 0..i."""
        if benchmark_info(bench).cumulative_test:
            return self.eval(bench.test_stream[i])
        return self.eval(bench.test_stream[: i + 1])

    @classmethod
    def extra_metrics(cls, cfg: MultiLaneConfig):
        return multilane_metrics(cfg.map_no_positive)

    @classmethod
    def benchmark_kwargs(cls, cfg: MultiLaneConfig, benchmark) -> dict:
        """Lanes = ``num_tasks`` or the number of experiences; classes = the benchmark's ``n_classes``."""
        n_classes = benchmark_info(benchmark).n_classes
        return {"num_classes": n_classes, "num_tasks": cfg.num_tasks or len(benchmark.train_stream)}
