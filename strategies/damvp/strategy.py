"""DAM-VP: diversity-aware meta visual prompting, as an Avalanche strategy (one experience = one dataset).

Paper: Huang et al., "Diversity-Aware Meta Visual Prompting", CVPR 2023 (arXiv 2303.08138).
Reference: shikiw/DAM-VP@dec5821 ``task_adapting/adapter.py::Adapter.our_method{,_with_head}``,
``task_adapting/main.py``, ``utils/train_utils.py::cosine_lr`` (re-implemented).

Per experience (a downstream dataset d): cluster phi of the first 1000 (shuffled, augmented) training images
with threshold tau -> K prototypes; K pad prompts start as copies of theta_meta; every image is routed to the
prompt of its nearest prototype (phi of the raw image); SGD with per-iteration warm-up + cosine lr; after each
epoch the best-validation prompts are kept; every 5 epochs the best-val prompts are tested. Afterwards the
adapter (prompts, prototypes, head) is kept, so every earlier dataset stays evaluable, and (``stream_meta_update``)
theta_meta takes a Reptile step toward the dataset's prompts, initialising the next dataset's prompts: the
meta-prompt is bootstrapped across a stream of datasets. ``meta_train`` runs the offline Reptile trainer.
This module is the loop; the per-dataset routing/clustering state (``DatasetRouting``) and the best-validation
prompts (``BestPrompts``) are ``routing.py``.

Defaults reproduce the reference: head-tuning momentum 0 (misspelt key) and head at the prompt lr
(``head_tuning_optimizer="fixed"``: momentum 0.9, head on its own 0.1 schedule); prompts only snapshotted
(``snapshot_head_with_best_val``); clustering on the augmented shuffled loader (``cluster_source``);
``legacy_zero_grad``: torch<2 ``zero_grad`` left zero tensors, so prompts not routed in a batch still move by
momentum / weight decay (torch>=2 skips them; False gives that behaviour).
Deviations: the offline meta-trainer really updates (see ``reptile.py``); validation/test accuracy loops run
inside the strategy on the benchmark's ``valid_stream``/``test_stream`` (no validation stream: the last prompts
are kept); test-time dispatch to a dataset's adapter uses the sample's task label (= dataset index), else the
experience index.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.evaluation.metric_results import MetricValue
from ctta.strategies.damvp.config import DAMVPConfig
from ctta.strategies.damvp.model import BACKBONE_DEFAULTS, DAMVPModel, DatasetAdapter, Featurizer, load_representation
from ctta.strategies.damvp.pixel import PadPrompter, load_prompter
from ctta.strategies.damvp.reptile import ReptileMetaTrainer, reptile_update
from ctta.strategies.damvp.routing import BestPrompts, DatasetRouting, local_labels
from torch.utils.data import DataLoader

from ctta.backbones.vit import PromptedViT
from ctta.clip_prompting.model import clip_parts
from ctta.registry import STRATEGIES
from ctta.templates.benchmark_info import BenchmarkInfo, benchmark_info
from ctta.templates.epoch import EpochTemplate
from ctta.utils import autocast


def warmup_cosine_lr(step: int, base: float, warmup: int, total: int) -> float:
    """Learning rate at step g (reference ``cosine_lr``): ``base (g+1)/W`` for g < W, else
    ``0.5 (1 + cos(pi (g-W)/(S-W))) base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * base


def _resolve(cfg: DAMVPConfig) -> tuple[str, str, str, float]:
    """(adapt_method, feature, meta_variant, meta_lr) with ``auto`` filled from the backbone key."""
    if cfg.backbone_key not in BACKBONE_DEFAULTS:
        raise ValueError(
            f"backbone_key={cfg.backbone_key!r}; supported: {sorted(BACKBONE_DEFAULTS)} (swin/moco/resnet50 have "
            "no ctta backbone)"
        )
    bd = BACKBONE_DEFAULTS[cfg.backbone_key]
    adapt = bd.adapt_method if cfg.adapt_method == "auto" else cfg.adapt_method
    feature = bd.feature if cfg.feature == "auto" else cfg.feature
    if adapt not in ("prompt_wo_head", "prompt_w_head"):
        raise ValueError(f"adapt_method={cfg.adapt_method!r}; valid: auto, prompt_wo_head, prompt_w_head")
    for name, val, ok in (
        ("cluster_source", cfg.cluster_source, ("train_loader", "eval_transform")),
        ("head_tuning_optimizer", cfg.head_tuning_optimizer, ("official", "fixed")),
    ):
        if val not in ok:
            raise ValueError(f"{name}={val!r}; valid: {list(ok)}")
    variant = "ht" if adapt == "prompt_w_head" else bd.meta_variant
    return adapt, feature, variant, bd.meta_lr if cfg.meta_lr is None else cfg.meta_lr


@STRATEGIES.register("damvp", config=DAMVPConfig)
class DAMVP(EpochTemplate):
    """DAM-VP over a stream of downstream datasets (one experience each; one experience = the paper's setting).

    Args (Avalanche's, plus the fields of ``DAMVPConfig`` as keyword arguments):
        model: a timm ViT (``num_classes=0``), a ``PromptedViT``, an open_clip CLIP (``backbone_key`` ``clip-*``;
            ctta's ``CLIPBackbone`` too) or a ``DAMVPModel``.
        train_mb_size, train_epochs, eval_mb_size: default to the config's ``batch_size``, ``epochs``,
            ``eval_batch_size``.
        num_classes: size of the global label space (datasets occupy disjoint class-id blocks); None: from the
            benchmark's class timeline or the experiences' targets.
        datasets: optional per-dataset info ``[{"name", "classes", "classnames"}]`` indexed by experience id.
        valid_stream, test_stream: optional per-dataset validation/test experiences (same indices); their
            accuracies are logged through the evaluator as ``Top1_Acc_Valid`` / ``Top1_Acc_Test``
            (``<metric>/train_phase/<stream>_stream/Exp<d>``).
        tokenizer: text tokenizer for CLIP (default: the backbone's, else open_clip's).
        input_normalization: ``(mean, std)`` the images are normalised with (the transfer scenario's
            ``normalization``); a CLIP backbone whose weights expect other statistics gets them mapped (None: none).
    """

    distributed_ok = True  # torchrun: exact sharded updates; clustering and accuracy loops replicated per rank
    config_class = DAMVPConfig
    model_class = DAMVPModel
    optimizer_refusal = (
        "DAM-VP builds one SGD per dataset over its cluster prompts (and head) with per-iteration warm-up and "
        "cosine learning rate; set lr, head_lr, weight_decay and head_tuning_optimizer instead"
    )
    criterion_refusal = (
        "DAM-VP's loss is cross-entropy over the current dataset's own classes (noise read-out, head or CLIP "
        "logits, chosen by backbone_key / adapt_method)"
    )

    def __init__(
        self, *, model, datasets=None, valid_stream=None, test_stream=None, tokenizer=None,
        input_normalization=None, **kwargs: Any,
    ) -> None:  # fmt: skip
        self._tokenizer, self._input_normalization = tokenizer, input_normalization
        super().__init__(model=model, **kwargs)
        self.adapt_method, self.feature, self.meta_variant, self.meta_lr = _resolve(self.cfg)
        self.routing = DatasetRouting(self.cfg, self.feature, self.adapt_method, datasets, self.device, self.precision)
        self.valid_exps = list(valid_stream) if valid_stream is not None else []
        self.test_exps = list(test_stream) if test_stream is not None else []
        self.history: dict[int, list[dict]] = {}
        self.seen_samples, self.eval_kind, self.eval_x = 0, None, 0
        self.best = BestPrompts(self.cfg.snapshot_head_with_best_val)

    @property
    def n_classes(self) -> int:
        return self.class_count()

    def prepare_backbone(self, model):
        """phi's ``Featurizer`` over the user's backbone (a plain ViT is wrapped as ``PromptedViT``)."""
        cfg = self.cfg
        _, feature, _, _ = _resolve(cfg)
        rep = tok = None
        if feature == "pre_logits_tanh":
            if not cfg.representation_path:
                raise ValueError(
                    "vit-b-22k phi needs strategy.representation_path (the in21k checkpoint with pre_logits)"
                )
            rep = load_representation(cfg.representation_path, int(model.embed_dim))
        if feature == "clip_logits":
            model, tok = clip_parts(model, self._tokenizer)
        elif not isinstance(model, PromptedViT):
            model = PromptedViT(model)
        return Featurizer(model, feature, rep, tok, input_normalization=self._input_normalization)

    def ready_to_build(self) -> bool:
        return True

    def build_model(self, backbone, experience) -> DAMVPModel:
        return DAMVPModel(backbone, _initial_meta_prompt(self.cfg, backbone.image_size))

    # ------------------------------------------------------------------ dataset setup
    def _dataset_id(self) -> int:
        return int(self.experience.current_experience)

    def build_adapter(self, d: int) -> DatasetAdapter:
        """Dataset ``d``'s adapter for the current experience (``DatasetRouting.build_adapter``)."""
        return self.routing.build_adapter(self.model, self.experience, d)

    # ------------------------------------------------------------------ Avalanche hooks
    def _before_training_exp(self, **kwargs: Any) -> None:
        d = self._dataset_id()
        self.model.to(self.device)
        self.build_adapter(d)
        self._step, self.best = 0, BestPrompts(self.cfg.snapshot_head_with_best_val)
        self.history[d] = []
        super()._before_training_exp(**kwargs)
        self._total = len(self.dataloader) * self.train_epochs
        self._warmup = self._total // 5

    def make_optimizer(self, **kwargs: Any) -> None:
        """SGD over the current dataset's prompts (one group each) and head."""
        ad = self.model.adapter(self._dataset_id())
        tuning, fixed = self.adapt_method == "prompt_w_head", self.cfg.head_tuning_optimizer == "fixed"
        momentum = 0.9 if (not tuning or fixed) else 0.0  # official head-tuning: misspelt key -> momentum 0
        wd = self.cfg.weight_decay if (tuning or self.feature == "clip_logits") else 0.0
        groups = [
            {"params": list(p.parameters()), "weight_decay": wd, "base_lr": self.cfg.lr} for p in ad.bank.prompters
        ]
        if ad.head is not None:
            head_base = self.cfg.head_lr if fixed else self.cfg.lr  # official: schedule sets the prompt lr everywhere
            groups.append({"params": list(ad.head.parameters()), "weight_decay": 0.0, "lr": self.cfg.head_lr,
                           "base_lr": head_base})  # fmt: skip
        self.optimizer = torch.optim.SGD(groups, lr=self.cfg.lr, momentum=momentum)
        self._touched: set[int] = set()

    def _before_training_iteration(self, **kwargs: Any) -> None:
        for g in self.optimizer.param_groups:  # lr set before the forward pass, every iteration
            g["lr"] = warmup_cosine_lr(self._step, g["base_lr"], self._warmup, self._total)
        self._step += 1
        super()._before_training_iteration(**kwargs)

    def loss_inputs(self) -> dict:
        return {"mb_logits_local": self.mb_logits_local}

    def forward_train(self) -> torch.Tensor:
        d = self._dataset_id()
        self.mb_logits_local = self.model.dataset_logits(self.mb_x, d).float()
        out = self.mb_x.new_full((len(self.mb_x), self.n_classes), float("-inf"), dtype=torch.float32)
        out[:, self.model.adapter(d).classes] = self.mb_logits_local
        return out

    def forward_eval(self) -> torch.Tensor:
        return self.model(self.mb_x, self._mb_dataset_ids(), self.n_classes)

    def _mb_dataset_ids(self) -> torch.Tensor:
        if len(self.mbatch) >= 3:
            return self.mbatch[-1].long()
        return torch.full((len(self.mb_x),), self._dataset_id(), dtype=torch.long, device=self.mb_x.device)

    def criterion(self) -> torch.Tensor:
        if self.is_training:
            ad = self.model.adapter(self._dataset_id())
            return F.cross_entropy(self.mb_logits_local, local_labels(self.mb_y, ad.classes))
        return F.cross_entropy(self.mb_output.clamp_min(-1e4), self.mb_y)

    def optimizer_step(self) -> None:
        if self.cfg.legacy_zero_grad:  # torch<2 semantics: once-used params keep zero grads, so SGD still moves them
            for g in self.optimizer.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        self._touched.add(id(p))
                    elif id(p) in self._touched:
                        p.grad = torch.zeros_like(p)
        super().optimizer_step()

    def _after_training_epoch(self, **kwargs: Any) -> None:
        d, epoch = self._dataset_id(), len(self.history[self._dataset_id()])
        ad, rec = self.model.adapter(d), {"epoch": epoch, "loss": float(self.loss.detach())}
        if d < len(self.valid_exps):
            rec["val_acc"] = self.accuracy(self.valid_exps[d].dataset, d)
            self.best.offer(ad, rec["val_acc"])  # strictly better -> deep-copy the prompts (and head if asked)
        every = self.cfg.test_every_epochs
        if every > 0 and epoch > 0 and (epoch + 1) % every == 0 and d < len(self.test_exps):
            rec["test_acc"] = self.best.evaluate_best(ad, lambda: self.accuracy(self.test_exps[d].dataset, d))
        self.history[d].append(rec)
        self._publish(rec, d)
        super()._after_training_epoch(**kwargs)

    def _publish(self, rec: dict, d: int) -> None:
        """Validation / test accuracy to the evaluator's loggers (not with ``evaluator=None``: nothing is logged)."""
        ev = self.evaluator
        if not (ev.metrics or ev.loggers):
            return
        x = self.clock.train_iterations
        for key, metric, exps in (
            ("val_acc", "Top1_Acc_Valid", self.valid_exps),
            ("test_acc", "Top1_Acc_Test", self.test_exps),
        ):
            if key in rec:
                stream = _stream_name(exps[d])
                ev.publish_metric_value(MetricValue(self, f"{metric}/train_phase/{stream}/Exp{d:03d}", rec[key], x))

    def _after_training_exp(self, **kwargs: Any) -> None:
        d = self._dataset_id()
        ad = self.model.adapter(d)
        self.best.restore(ad)  # best-val prompts (+ head if snapshotted), current head otherwise
        if self.cfg.stream_meta_update:  # bootstrap theta_meta across datasets (Reptile toward this dataset)
            reptile_update(self.model.meta_prompt, [ad.bank], self.cfg.stream_meta_step_size)
        ad.requires_grad_(False)  # a finished dataset's prompts/head are kept frozen (still evaluable)
        self.seen_samples += len(self.experience.dataset)
        super()._after_training_exp(**kwargs)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def accuracy(self, dataset, d: int) -> float:
        """Top-1 of dataset ``d``'s adapter on an Avalanche dataset (eval transform), local labels."""
        ad, correct, n = self.model.adapter(d), 0, 0
        was_training = self.model.training
        self.model.eval()
        for batch in DataLoader(dataset.eval(), batch_size=self.eval_mb_size, shuffle=False):
            x, y = batch[0].to(self.device), batch[1].to(self.device)
            with autocast(self.device, self.precision):
                pred = self.model.dataset_logits(x, d).argmax(-1)
            correct += int((pred == local_labels(y, ad.classes)).sum())
            n += len(y)
        self.model.train(was_training)
        return correct / max(n, 1)

    def eval_after_experience(self, bench, i: int) -> dict:
        """Task-end evaluation on the test images of every dataset trained so far (one pooled experience)."""
        classes = torch.cat([a.classes.cpu() for a in self.model.adapters.values()])
        test = benchmark_info(bench).test_dataset
        if test is None:
            return self.eval(bench.test_stream)
        idx = torch.isin(torch.as_tensor(list(test.targets)), classes).nonzero().flatten().tolist()
        self.eval_kind, self.eval_x = "task_end", self.seen_samples
        try:
            return self.eval(EagerCLStream("test", [DatasetExperience(dataset=test.subset(idx), current_experience=i)]))
        finally:
            self.eval_kind = None

    # ------------------------------------------------------------------ offline meta-training
    def meta_train(self, experiences, epochs: int, finetune_eval=None):
        """Offline Reptile meta-training of theta_meta over source datasets (one experience each).

        Sets the model's meta-prompt to the ``best_train_loss`` checkpoint (the default theta_meta) and returns the
        ``reptile.MetaResult``. ``finetune_eval(prompt) -> score`` enables the ``best_test_finetune`` checkpoint.
        """
        self.model.to(self.device)
        tasks = [self.routing.meta_task(self.model, exp) for exp in experiences]
        self.experience = None
        trainer = ReptileMetaTrainer(
            self.model.meta_prompt, meta_lr=self.meta_lr, variant=self.meta_variant,
            meta_step_size=self.cfg.meta_step_size, update_step=self.cfg.update_step,
            weight_decay=self.cfg.meta_weight_decay, head_lr=self.cfg.head_lr,
            diversity_adaptive=self.cfg.diversity_adaptive, device=self.device,
        )  # fmt: skip
        result = trainer.fit(tasks, epochs, finetune_eval)
        with torch.no_grad():
            for p, q in zip(self.model.meta_prompt.parameters(), result.best_train_loss.parameters()):
                p.copy_(q)
        return result

    # ------------------------------------------------------------------ construction
    @classmethod
    def benchmark_kwargs(cls, cfg: DAMVPConfig, benchmark) -> dict:
        """ctta's transfer benchmark: class count, per-dataset info, validation and test streams."""
        info = benchmark_info(benchmark)
        return {
            "num_classes": info.n_classes,
            "datasets": _dataset_info(info),
            "valid_stream": getattr(benchmark, "valid_stream", None),
            "test_stream": getattr(benchmark, "test_stream", None),
            "input_normalization": info.normalization,  # the scenario's mean/std
        }


def _stream_name(exp) -> str:
    try:
        name = exp.origin_stream.name
    except Exception:  # an experience without origin stream
        name = "valid"
    return name if name.endswith("_stream") else f"{name}_stream"


def _initial_meta_prompt(cfg: DAMVPConfig, image_size: int) -> PadPrompter:
    if cfg.meta_prompt_path:
        meta = load_prompter(cfg.meta_prompt_path)
        if (meta.image_size, meta.pad_width) != (image_size, cfg.pad_width):
            raise ValueError(
                f"meta-prompt {cfg.meta_prompt_path} is {meta.image_size}px / width {meta.pad_width}, the run needs "
                f"{image_size}px / width {cfg.pad_width}"
            )
        return meta
    return PadPrompter(image_size, cfg.pad_width, generator=torch.Generator().manual_seed(cfg.seed))


def _dataset_info(info: BenchmarkInfo) -> list[dict]:
    """Name, label ids and class names of each dataset of a transfer stream (none for other benchmarks)."""
    if info.dataset_names is None:
        return []
    cnames = info.experience_classnames or [None] * len(info.dataset_names)
    return [
        {"name": n, "classes": list(c), "classnames": list(cn) if cn is not None else None}
        for n, c, cn in zip(info.dataset_names, info.task_classes, cnames)
    ]
