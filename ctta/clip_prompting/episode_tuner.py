"""The episodic test-time prompt-tuning engine for CLIP (TPT, DiffTPT): ``PromptTuner``.

Paper: TPT (Shu et al., NeurIPS 2022, arXiv 2209.07511). Reference: azshue/TPT@63ecbace (MIT)
``tpt_classification.py:{test_time_tuning, test_time_adapt_eval}``, re-implemented; no code
copied. ``PromptTuningConfig`` holds its settings;
the ``tpt`` and ``difftpt`` strategies wrap it (DiffTPT plugs its view filtration in through ``select_fn``).

Per test sample (an episode): reset the context to ``ctx0`` and a fresh AdamW; encode the N views; keep the views
chosen by ``select_fn`` at step 1 (TPT: the ``int(N * p)`` lowest-entropy ones); ``tta_steps`` AdamW steps on the
marginal entropy of their mean prediction; predict from view 0 alone with the tuned context.

Two computations of the same function:
- straightforward (``config.fast=False``): the reference's computation: 77-token text, the views re-encoded at
  every step and for the prediction, one sample at a time, ``torch.optim.AdamW`` and a loss scaler per step;
- fast (default), exact in exact arithmetic: text truncated at the longest EOT in length
  buckets, with SOS + context encoded once per context rather than once per class (shared prefix); view features
  encoded once per sample; zero-shot text features ``T0`` precomputed per class set (the step-1 selection needs no
  text pass); the step-1 backward run on ONE retained text forward at ``ctx0`` shared by every sample (a batched
  vector-Jacobian product), or the 1-step Jacobian method; batched episodes with stacked per-sample contexts and
  ``BatchedAdamW`` (elementwise, so each slice equals its own optimiser); the shared loss scaler's (sample, step)
  events forecast in stream order, samples after an overflow recomputed at the new scale.

A trained prompted CLIP handed over as an object (``PromptTuner.from_prompted``): a shared CoOp context (CoOp, PRE)
runs on the engine above; other methods (CoCoOp, MaPLe with its deep prompts, PromptSRC, ATPrompt) have every
trainable parameter tuned through the model's own forward (the straightforward loop, one sample at a time); a
``select_fn`` that reads image features (DiffTPT's filtration) gets the frozen CLIP's, unprompted.

Deviations from the reference code: selection sorts entropies stably; ``grad_scaler="auto"`` = the shared scaler
under fp16 only (the reference's ``torch.cuda.amp.GradScaler`` is disabled on CPU); ``tta_steps=0`` gives the
zero-shot CLIP prediction of view 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ctta.clip_prompting.episode_config import PromptTuningConfig
from ctta.clip_prompting.episode_model import TPTModel, TunedContext, load_coop_ctx, load_prompts, trainable_state
from ctta.clip_prompting.episode_optim import BatchedAdamW, LossScaler, jacobian_bytes, text_jacobian
from ctta.losses import avg_entropy, confident_indices, gather_views

__all__ = ["PromptTuner", "PromptTuningConfig", "TPTModel", "SelectFn"]

SelectFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (B,N,C), feats (B,N,E)) -> (B, k)


class PromptTuner:
    """Script-level TPT: ``predict(views) -> (C,)`` and ``predict_many(batch) -> (B, C)``.

    Args:
        clip_model: frozen open_clip CLIP (e.g. ``create_clip("ViT-B-16", "openai")[0]``).
        tokenizer: its tokenizer.
        classnames: class names of the current label space (``set_classnames`` changes them).
        config: a ``PromptTuningConfig`` (``TPTConfig``, ``DiffTPTConfig``); its fields drive every choice here.
        select_fn: view selection ``(logits (B, N, C), image feats (B, N, E)) -> (B, k)`` indices, run once per
            sample at step 1 (default: the ``selection_p`` lowest-entropy views). DiffTPT passes its filtration.
        generator: RNG for a random context init.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer,
        classnames: Sequence[str],
        config,
        *,
        select_fn: SelectFn | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if config is None:
            raise TypeError("PromptTuner needs a config, e.g. ctta.strategies.tpt.TPTConfig()")
        self.cfg = cfg = config
        if cfg.init.startswith("prompts:"):
            raise ValueError("init='prompts:<path>' needs a prompted model: PromptTuner.from_prompted(model, config)")
        text = TunedContext.from_words(
            clip_model, tokenizer, classnames, cfg.ctx_init, cfg.n_ctx, generator=generator, **_text_options(cfg)
        )
        if cfg.init.startswith("coop:"):
            ctx = load_coop_ctx(cfg.init[5:])
            if ctx.shape != text.ctx.shape:
                raise ValueError(f"CoOp ctx has shape {tuple(ctx.shape)}, the encoder expects {tuple(text.ctx.shape)}")
            with torch.no_grad():
                text.ctx.copy_(ctx)
                text.ctx0.copy_(ctx)
        self._setup(TPTModel(clip_model, text), None, select_fn)

    @classmethod
    def from_prompted(cls, model: nn.Module, config, *, select_fn: SelectFn | None = None) -> PromptTuner:
        """Test-time tuning of a trained prompted CLIP (``ctta.clip_prompting.PromptedCLIP``: CoOp, CoCoOp, MaPLe,
        PromptSRC, PRE, ATPrompt models) handed over as an object.

        A model whose prediction is CLIP with a shared CoOp context (``model.text_context()``; CoOp, PRE) gets the
        exact fast engine on that context, as from a CoOp checkpoint. Any other model (CoCoOp's meta-net, MaPLe's
        and PromptSRC's deep and vision prompts, ATPrompt's attribute tokens) is tuned through its own forward:
        every trainable parameter is reset per episode and updated by AdamW on the marginal entropy (the
        straightforward loop; ``fast``-path switches do not apply). ``config.init="prompts:<path>"`` first loads
        a ``save_prompts`` file into ``model``.
        """
        if config is None:
            raise TypeError("PromptTuner.from_prompted needs a config, e.g. ctta.strategies.tpt.TPTConfig()")
        if config.init.startswith("coop:"):
            raise ValueError("init='coop:<path>' starts a plain CLIP's context; a prompted model brings its own")
        if config.init.startswith("prompts:"):
            load_prompts(model, config.init[len("prompts:") :])
        tuner = cls.__new__(cls)
        tuner.cfg = config
        ctx = _shared_context(model)
        if ctx is not None:
            text = TunedContext(model.clip, model.tokenizer, model.classnames, ctx, **_text_options(config))
            tuner._setup(TPTModel(model.clip, text), None, select_fn)
        else:
            tuner._setup(model, model, select_fn)
        return tuner

    def _setup(self, model: nn.Module, prompted: nn.Module | None, select_fn: SelectFn | None) -> None:
        cfg = self.cfg
        self.model, self.prompted = model, prompted
        self._start = trainable_state(prompted) if prompted is not None else None
        self.select_fn = select_fn or (lambda logits, feats: confident_indices(logits, cfg.selection_p))
        self.scaler: LossScaler | None = None
        self._opt: BatchedAdamW | torch.optim.Optimizer | None = None  # continual-mode optimiser
        self._art: dict = {}
        self.expected_samples = 0
        self.last_selected: torch.Tensor | None = None  # (B, k) view indices of the last predict_many call
        self.last_ctx: torch.Tensor | None = None  # (B, n_ctx, D) tuned contexts of the last predict_many call
        self._log: list = []

    # ------------------------------------------------------------------ set-up
    @property
    def text(self) -> TunedContext:
        """The tuned context (``.ctx``, ``.ctx0``) over ``PromptedText``; a tuned prompted model's ``PromptedText``."""
        return self.model.text

    @property
    def clip(self) -> nn.Module:
        return self.model.clip

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def classnames(self) -> list[str]:
        return list(self.model.classnames if self.prompted is not None else self.text.classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Change the label space; text artefacts (``T0``, graph, Jacobian) are rebuilt lazily."""
        if list(classnames) != self.classnames:
            (self.prompted or self.text).set_classnames(classnames)
            self._art = {}

    def plan(self, n_samples: int) -> None:
        """Hint the number of samples to come with this class set (lets ``text_grad='auto'`` pick the Jacobian)."""
        self.expected_samples = int(n_samples)

    def reset(self) -> None:
        """Restore the initial context (a prompted model's initial prompts) and drop the continual optimiser state."""
        with torch.no_grad():
            if self.prompted is None:
                self.text.ctx.copy_(self.text.ctx0)
            else:
                for name, p in self.prompted.named_parameters():
                    if name in self._start:
                        p.copy_(self._start[name])
        self._opt = None

    def amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.amp
        if amp == "off" or (amp == "auto" and self.device.type != "cuda"):
            return None
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _autocast(self):
        dtype = self.amp_dtype()
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _scaler(self) -> LossScaler:
        if self.scaler is None:
            mode = self.cfg.grad_scaler
            if mode == "auto":
                mode = "shared" if self.amp_dtype() == torch.float16 else "none"
            self.scaler = LossScaler(self.cfg.init_scale, mode)
        return self.scaler

    # ------------------------------------------------------------------ shared pieces
    def encode_views(self, views: torch.Tensor) -> torch.Tensor:
        """``(..., 3, H, W)`` -> L2-normalised image features ``(..., E)`` (no grad, autocast)."""
        with torch.no_grad(), self._autocast():
            f = self.clip.encode_image(views.reshape(-1, *views.shape[-3:]))
            f = f / f.norm(dim=-1, keepdim=True)
        return f.reshape(*views.shape[:-3], -1)

    def _logits(self, feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """``scale * feats @ text^T``: feats ``(B, k, E)``; text ``(C, E)`` or per-sample ``(B, C, E)``."""
        scale = self.clip.logit_scale.exp()
        if text_feats.dim() == 2:
            return scale * feats @ text_feats.t()
        return scale * feats @ text_feats.transpose(-1, -2)

    def _text(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        t = self.text(ctx)
        return t / t.norm(dim=-1, keepdim=True)

    # ------------------------------------------------------------------ public API
    def predict(self, views: torch.Tensor) -> torch.Tensor:
        """Tune on the views of one sample ``(N, 3, H, W)`` (``views[0]`` the original); returns ``(C,)`` logits."""
        if views.dim() != 4:
            raise ValueError(f"predict expects views (N, 3, H, W), got shape {tuple(views.shape)}")
        return self.predict_many(views[None])[0]

    def predict_many(self, batch: torch.Tensor) -> torch.Tensor:
        """Tune and predict every sample of ``batch`` ``(B, N, 3, H, W)``; equal to B calls of ``predict``."""
        if batch.dim() != 5:
            raise ValueError(f"predict_many expects (B, N, 3, H, W) views, got shape {tuple(batch.shape)}")
        batch = batch.to(self.device)
        self._log = []
        try:
            out = self._predict_all(batch)
        finally:
            if self._log:
                self.last_selected = torch.cat([i for i, _ in self._log])
                self.last_ctx = torch.cat([c for _, c in self._log])
        return out

    def _predict_all(self, batch: torch.Tensor) -> torch.Tensor:
        if self.prompted is not None:
            return torch.stack([self._predict_prompted(v) for v in batch])
        if not self.cfg.fast:
            return torch.stack([self._predict_straightforward(v) for v in batch])
        size = self.cfg.episode_batch if self.cfg.episodic else 1
        out, i = [], 0
        while i < len(batch):
            chunk = batch[i : i + size]
            logits, done = self._predict_fast(chunk, stepwise=len(chunk) == 1)
            if done == 0:  # the first sample overflowed under the shared scaler: redo it step by step
                logits, done = self._predict_fast(chunk[:1], stepwise=True)
            out.append(logits)
            i += done
        return torch.cat(out)

    # ------------------------------------------------------------------ straightforward path (reference)
    def _predict_straightforward(self, views: torch.Tensor) -> torch.Tensor:
        cfg, ctx, scaler = self.cfg, self.text.ctx, self._scaler()
        if cfg.episodic or self._opt is None:
            self._opt = torch.optim.AdamW([ctx], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        sel = None
        for _ in range(cfg.tta_steps):
            with torch.enable_grad(), self._autocast():
                feats = self.encode_views(views)  # (N, E)
                logits = self._logits(feats, self._text())  # (N, C)
                if sel is None:
                    sel = self.select_fn(logits.detach()[None], feats[None])[0]
                loss = avg_entropy(logits[sel])
            self._opt.zero_grad()
            (loss * scaler.scale).backward()
            ctx.grad.div_(scaler.scale)
            found_inf = scaler.skips and not bool(torch.isfinite(ctx.grad).all())
            if not found_inf:
                self._opt.step()
            scaler.update(found_inf)
        self._log_selected(sel[None] if sel is not None else torch.zeros(1, 0, dtype=torch.long), ctx[None])
        with torch.no_grad(), self._autocast():
            out = self._logits(self.encode_views(views[:1]), self._text())[0].float()
        if cfg.episodic:
            self.reset()
        return out

    # ------------------------------------------------------------------ a prompted model, through its forward
    def _predict_prompted(self, views: torch.Tensor) -> torch.Tensor:
        """One episode of a prompted model (``from_prompted``): its trainable parameters tuned on its own logits."""
        cfg, model, scaler = self.cfg, self.prompted, self._scaler()
        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.episodic or self._opt is None:
            hyper = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
            self._opt = torch.optim.AdamW(params, **hyper)
        sel = None
        for _ in range(cfg.tta_steps):
            with torch.enable_grad(), self._autocast():
                logits = model(views).float()  # (N, C)
                if sel is None:
                    sel = self.select_fn(logits.detach()[None], self.encode_views(views)[None])[0]
                loss = avg_entropy(logits[sel])
            self._opt.zero_grad()
            (loss * scaler.scale).backward()
            grads = [p.grad for p in params if p.grad is not None]
            for g in grads:
                g.div_(scaler.scale)
            found_inf = scaler.skips and not all(bool(torch.isfinite(g).all()) for g in grads)
            if not found_inf:
                self._opt.step()
            scaler.update(found_inf)
        flat = torch.cat([p.detach().flatten() for p in params])[None]  # (1, P) the tuned prompt parameters
        self._log_selected(sel[None] if sel is not None else torch.zeros(1, 0, dtype=torch.long), flat)
        with torch.no_grad(), self._autocast():
            out = model(views[:1])[0].float()
        if cfg.episodic:
            self.reset()
        return out

    def _log_selected(self, idx: torch.Tensor, ctx: torch.Tensor) -> None:
        """Record the selected view indices ``(b, k)`` and tuned contexts ``(b, n, D)`` of finished samples."""
        self._log.append((idx.detach().cpu(), ctx.detach().cpu().clone()))

    # ------------------------------------------------------------------ fast path
    def _artefacts(self) -> dict:
        """Per class set: ``T0`` (normalised text features at ctx0), its retained graph, and J when chosen."""
        key = (tuple(self.text.classnames), self.device, self.amp_dtype(), self._use_jacobian())
        if self._art.get("key") == key:
            return self._art
        self._art = {"key": key}
        ctx0 = self.text.ctx0
        if self._use_jacobian():
            self._art["jac"] = text_jacobian(self.text, ctx0)
        if self.cfg.step1_graph and self.cfg.tta_steps > 0 and "jac" not in self._art:
            leaf = ctx0.detach().clone().requires_grad_(True)
            with torch.enable_grad(), self._autocast():
                t0 = self._text(leaf)
            self._art.update(leaf=leaf, t0_graph=t0, t0=t0.detach())
        else:
            with torch.no_grad(), self._autocast():
                self._art["t0"] = self._text(ctx0)
        return self._art

    def _use_jacobian(self) -> bool:
        cfg = self.cfg
        if cfg.text_grad == "jacobian":
            return True
        if cfg.text_grad != "auto" or cfg.tta_steps != 1 or not cfg.episodic:
            return False
        proj = self.text.tower.text_projection
        n_out = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[-1]
        size = jacobian_bytes(self.text.n_classes, n_out, self.text.ctx0.numel())
        return self.expected_samples >= cfg.jacobian_min_ratio * n_out and size <= cfg.jacobian_max_gb * 2**30

    def _head_grad(self, sel: torch.Tensor, t0: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Per-sample ``d(scale_b * loss_b)/dT_hat`` at shared text features ``t0``: ``(B, C, E)``."""
        t = t0.detach().expand(sel.shape[0], *t0.shape).clone().requires_grad_(True)
        with torch.enable_grad(), self._autocast():
            loss = avg_entropy(self._logits(sel, t))  # (B,)
        (g,) = torch.autograd.grad((loss * scales).sum(), t)
        return g

    def _step1_grad(self, art: dict, sel: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Gradient at ctx0 for every sample without a per-sample text forward: ``(B, n_ctx, D)``."""
        g_text = self._head_grad(sel, art["t0"], scales)  # (B, C, E)
        if "jac" in art:
            jac = art["jac"]  # (C, E, n*D)
            g = g_text.reshape(len(sel), -1).to(jac.dtype) @ jac.reshape(-1, jac.shape[-1])
            return g.reshape(len(sel), *self.text.ctx0.shape).float()
        cot = g_text.to(art["t0_graph"].dtype)
        if len(cot) == 1:  # a plain backward (vmap adds overhead for a single sample)
            return torch.autograd.grad(art["t0_graph"], art["leaf"], cot[0], retain_graph=True)[0][None].float()
        (g,) = torch.autograd.grad(art["t0_graph"], art["leaf"], cot, retain_graph=True, is_grads_batched=True)
        return g.float()  # one backward per sample, batched

    def _full_grad(self, ctx: torch.Tensor, feats_fn, idx, scales):
        """Text forward + backward with stacked contexts ``(B, n, D)``; selects views when ``idx`` is None."""
        leaf = ctx.detach().clone().requires_grad_(True)
        with torch.enable_grad(), self._autocast():
            feats = feats_fn()  # (B, N, E)
            t = self._text(leaf)  # (B, C, E)
            if idx is None:
                idx = self.select_fn(self._logits(feats, t).detach(), feats)
            loss = avg_entropy(self._logits(gather_views(feats, idx), t))  # (B,)
        (g,) = torch.autograd.grad((loss * scales).sum(), leaf)
        return g.float(), idx

    def _predict_fast(self, views: torch.Tensor, stepwise: bool) -> tuple[torch.Tensor, int]:
        """Tune a chunk of episodes together; returns the logits of the finished samples and their number.

        Loss scales per (sample, step) are forecast in stream order (sample-major, as the reference runs them);
        with a shared dynamic scaler, samples after the first overflowing one are left for the caller to rerun
        at the new scale. ``stepwise`` (one sample) follows the scaler step by step instead.
        """
        cfg, scaler, b, n_steps = self.cfg, self._scaler(), len(views), self.cfg.tta_steps
        cached = self.encode_views(views) if cfg.cache_view_features else None  # (B, N, E)

        def feats_fn():
            return cached if cached is not None else self.encode_views(views)

        ctx, opt = self._start_context(b)
        art, idx = (self._artefacts(), None) if cfg.episodic else (None, None)
        if art is not None and n_steps == 0:  # zero-shot CLIP: view 0 against T0
            with torch.no_grad(), self._autocast():
                out = self._logits(feats_fn()[:, :1], art["t0"])[:, 0].float()  # (B, C)
            self._log_selected(torch.zeros(b, 0, dtype=torch.long), ctx)
            return out, b
        if art is not None:  # step-1 selection from the zero-shot features T0
            with torch.no_grad(), self._autocast():
                idx = self.select_fn(self._logits(feats_fn(), art["t0"]), feats_fn())
        plan = scaler.forecast(b * n_steps)
        overflow = [False] * b
        for s in range(n_steps):
            scales = torch.tensor(
                [scaler.scale if stepwise else plan[i * n_steps + s] for i in range(b)], device=self.device
            )
            if s == 0 and art is not None and ("jac" in art or "t0_graph" in art):
                grad = self._step1_grad(art, gather_views(feats_fn(), idx), scales)
            else:
                grad, idx = self._full_grad(ctx, feats_fn, idx, scales)
            grad = grad / scales.view(-1, 1, 1)
            skip = [scaler.skips and not f for f in torch.isfinite(grad).flatten(1).all(1).tolist()]
            opt.step(grad, [not k for k in skip])
            overflow = [o or k for o, k in zip(overflow, skip)]
            if stepwise:
                scaler.update(skip[0])
        done = b
        if not stepwise:
            done = next((i for i, o in enumerate(overflow) if o), b) if scaler.mode == "shared" else b
            for _ in range(done * n_steps):
                scaler.update(False)
        if done == 0:
            return ctx.new_zeros(0, self.text.n_classes), 0
        self._log_selected(idx[:done], ctx[:done])
        with torch.no_grad(), self._autocast():
            f0 = cached[:done, 0] if cached is not None else self.encode_views(views[:done, 0])  # (b, E)
            out = self._logits(f0[:, None], self._text(ctx[:done]))[:, 0].float()  # (b, C)
        return out, done

    def _start_context(self, b: int):
        """Stacked contexts and optimiser: fresh copies of ctx0 (episodic) or the persistent state (continual)."""
        cfg = self.cfg
        if cfg.episodic:
            ctx = self.text.ctx0.detach().expand(b, *self.text.ctx0.shape).clone()
            opt = BatchedAdamW(ctx, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
            return ctx, opt
        ctx = self.text.ctx.data[None]  # (1, n, D) view of the parameter: updated in place
        if self._opt is None or not isinstance(self._opt, BatchedAdamW):
            self._opt = BatchedAdamW(ctx, cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay)
        self._opt.param = ctx
        return ctx, self._opt


def _text_options(cfg) -> dict:
    """``TunedContext`` speed-up switches for ``cfg`` (the straightforward path: 77 tokens, no shared prefix)."""
    trunc = cfg.text_truncation if cfg.fast else "none"
    return {
        "truncate": trunc != "none",
        "n_buckets": cfg.n_buckets if trunc == "bucket" else 1,
        "shared_prefix": cfg.fast and cfg.shared_prefix and trunc != "none",
    }


def _shared_context(model: nn.Module) -> torch.Tensor | None:
    """The shared CoOp context of a prompted CLIP whose prediction is CLIP with that context, else None."""
    if not getattr(model, "context_is_the_prompt", True):
        return None
    try:
        return model.text_context().detach()
    except (TypeError, AttributeError):
        return None
