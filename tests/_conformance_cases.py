"""Tiny models, tiny data and Avalanche-generated benchmarks for the Avalanche conformance suite.

Everything here is what an Avalanche user has at hand: a plain timm ViT (``num_classes=0``) or an open_clip CLIP
model, torch datasets with a ``targets`` attribute, and benchmarks made by Avalanche's own generators
(``class_incremental_benchmark``, legacy ``nc_benchmark``, ``benchmark_from_datasets``, ``split_online_stream``).
Nothing is set on a benchmark by these helpers. ``SPECS`` holds, per registered strategy, its family, the tiny
method keyword arguments, the ctta metrics a user would add to an ``EvaluationPlugin`` and the names they log under.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios import benchmark_from_datasets, class_incremental_benchmark, split_online_stream
from avalanche.benchmarks.utils import as_classification_dataset
from torch.utils.data import TensorDataset

N_CLASSES = 10  # digits
HALVES = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))  # the two experiences of every class-incremental benchmark here
TINY_VIT = dict(img_size=32, patch_size=8, depth=6, embed_dim=48, num_heads=3)  # depth 6: MVP's layers 0-4 exist
N_TRAIN, N_TEST = 100, 50  # digits samples (about 10 / 5 per class)
N_VIEWS, N_VIEW_SAMPLES, N_DIFFUSION = 8, 10, 4  # test-time data: 10 samples (one per class) of 8 views


# ------------------------------------------------------------------------------------------------------- models
def tiny_vit(seed: int = 0) -> torch.nn.Module:
    """A plain random timm ViT without head (32 px, patch 8, depth 6, dim 48, 3 heads), as a user builds it."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)


@functools.cache
def _clip_once():
    from ctta.backbones.clip import create_clip

    torch.manual_seed(0)
    model, _, tokenizer = create_clip("ctta-tiny-clip", "")
    return model, tokenizer


def tiny_clip():
    """``(model, tokenizer)``: a fresh copy of the tiny random open_clip CLIP (32 px) and its tokenizer."""
    model, tokenizer = _clip_once()
    return copy.deepcopy(model), tokenizer


# --------------------------------------------------------------------------------------------------------- data
@functools.cache
def _digits():
    from ctta.data.digits import load_digits

    return load_digits(img_size=32)


def _subset(ds, n: int):
    from ctta.data.digits import TensorImageDataset

    return TensorImageDataset(ds.images[:n], ds.targets[:n], ds.classes)


def digits(n_train: int = N_TRAIN, n_test: int = N_TEST):
    """Train/test torch datasets of scikit-learn digits at 32 px with integer ``targets`` (every class present)."""
    train, test = _digits()
    return _subset(train, n_train), _subset(test, n_test)


@functools.cache
def _view_tensors():
    from ctta.data.tta_views import make_views

    _, test = _digits()
    first = {}
    for i, y in enumerate(test.targets):  # one sample per class, in class order
        first.setdefault(int(y), i)
    idx = [first[c] for c in range(N_CLASSES)][:N_VIEW_SAMPLES]
    views = make_views([test.images[i] for i in idx], n_views=N_VIEWS, resolution=32, seed=0)  # (B, V, 3, H, W)
    return views, [int(test.targets[i]) for i in idx]


def views():
    """Test-time data as the TPT papers feed it: a torch dataset of ``(views (V, 3, H, W), y)`` with ``targets``
    (view 0 the centre crop), one sample per digit class."""
    x, y = _view_tensors()
    ds = TensorDataset(x, torch.tensor(y))
    ds.targets = list(y)
    return ds


def classnames() -> list[str]:
    from ctta.data.digits import DIGIT_NAMES

    return list(DIGIT_NAMES)


def multilabel_benchmark():
    """ctta's MLCIL benchmark (an ordinary Avalanche ``CLScenario``) over generated multi-label images:
    8 classes in 2 tasks of 4, multi-hot targets."""
    from ctta.scenarios.multilabel import multilabel_benchmark as build
    from ctta.scenarios.multilabel import task_classes

    from ctta.data.multilabel_datasets import make_synthetic_multilabel

    train, test = make_synthetic_multilabel(num_classes=8, n_train=48, n_test=24, img_size=32)
    return build(train, test, task_classes(list(range(8)), increment=4), classnames=train.classes)


# --------------------------------------------------------------------------------------------------- benchmarks
def class_incremental(train, test):
    """Avalanche's ``class_incremental_benchmark``: two experiences of five classes."""
    data = {"train": as_classification_dataset(train), "test": as_classification_dataset(test)}
    return class_incremental_benchmark(data, class_order=list(range(N_CLASSES)), num_classes_per_exp=[5, 5])


def legacy_nc(train, test):
    """Avalanche's legacy ``nc_benchmark``: two experiences of five classes, (x, y, t=0) samples."""
    return nc_benchmark(train, test, n_experiences=2, task_labels=False, fixed_class_order=list(range(N_CLASSES)))


def from_datasets(train, test):
    """Avalanche's ``benchmark_from_datasets``: one experience per class half, no class timeline."""
    tr, te = as_classification_dataset(train), as_classification_dataset(test)

    def part(ds, classes):
        return ds.subset([i for i, y in enumerate(ds.targets) if int(y) in classes])

    return benchmark_from_datasets(train=[part(tr, c) for c in HALVES], test=[part(te, c) for c in HALVES])


def online(bench, experience_size: int = 32):
    """Avalanche's ``split_online_stream`` over a benchmark's train stream (defaults: no task boundaries)."""
    return split_online_stream(bench.train_stream, experience_size=experience_size, seed=0)


# ------------------------------------------------------------------------------------------------- per strategy
@dataclass(frozen=True)
class Spec:
    """How the suite drives one registered strategy.

    Attributes:
        family: ``online`` (online CL, one incoming batch at a time), ``epoch`` (per-experience epochs) or ``tta``
            (test-time adaptation inside ``eval()``).
        clip: the user's model is an open_clip CLIP (the method also needs the tokenizer and class names), else a
            timm ViT.
        method_kwargs: tiny values of fields of the strategy's config dataclass.
        misspelt: a misspelling of one of the method's own keyword arguments.
        ctta_metrics: the ctta metrics a user adds to an ``EvaluationPlugin`` (a factory; None: none).
        metric_names: names (prefixes before the first ``/``) those metrics log under.
        multilabel: the user-evaluator case runs on multi-label data.
        sizes: the config fields mirroring ``avalanche_kwargs`` when the family's defaults do not name them.
    """

    family: str
    clip: bool = False
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    misspelt: str = "lrr"
    ctta_metrics: Callable[[], list] | None = None
    metric_names: tuple[str, ...] = ()
    multilabel: bool = False
    sizes: dict[str, Any] | None = None  # the method's own config_sizes (its size fields have other names)

    @property
    def config_sizes(self) -> dict[str, Any]:
        """The config fields that mirror ``avalanche_kwargs`` (sizes, epochs), for ``config=`` construction."""
        if self.sizes is not None:
            return dict(self.sizes)
        if self.family == "tta":
            return dict(episode_batch=5)
        sizes = dict(batch_size=32, eval_batch_size=64)
        return sizes if self.family == "online" else {**sizes, "epochs": 1}


def _anytime_metrics() -> list:
    from ctta.metrics import AnytimeAccuracy

    return [AnytimeAccuracy()]


def _top5() -> list:
    from ctta.metrics import TopKAccuracy

    return [TopKAccuracy(5)]


def _multilabel_metrics() -> list:
    from ctta.strategies.multilane.metrics import multilane_metrics

    return list(multilane_metrics())


_LLM_LOGS = Path(__file__).resolve().parents[1] / "configs" / "smoke" / "llm_logs"  # canned LLM answers (ipo, ...)
ONLINE = dict(family="online", ctta_metrics=_anytime_metrics, metric_names=("A_auc", "A_last"))
TOP5 = dict(ctta_metrics=_top5, metric_names=("Top5_Acc_Stream",))
SPECS: dict[str, Spec] = {
    "vpt": Spec(**ONLINE, method_kwargs=dict(n_prompts=2, lr=0.01, online_iters=1), misspelt="n_promts"),
    "promptcam_online": Spec(**ONLINE, method_kwargs=dict(lr=0.01, online_iters=1), misspelt="online_iter"),
    "mvp": Spec(**ONLINE, method_kwargs=dict(online_iters=1), misspelt="online_iter"),
    "l2p": Spec(
        **ONLINE, method_kwargs=dict(pool_size=4, top_k=2, prompt_length=2, online_iters=1), misspelt="pool_sise"
    ),
    "dualprompt": Spec(
        **ONLINE,
        method_kwargs=dict(pool_size=4, g_layers=(0, 1), g_length=2, e_layers=(2, 3), e_length=2, online_iters=1),
        misspelt="g_lenght",
    ),
    "multilane": Spec(
        "epoch",
        method_kwargs=dict(num_selectors=2, num_prompts=2, num_prompt_layers=2, lr=0.05),
        misspelt="num_selector",
        ctta_metrics=_multilabel_metrics,
        metric_names=("mAP", "CF1", "OF1"),
        multilabel=True,
    ),
    "damvp": Spec(
        "epoch",
        method_kwargs=dict(tau=0.7, lr=1000.0, pad_width=4, n_noise=32, test_every_epochs=0),
        misspelt="pad_widht",
    ),
    "promptcam": Spec("epoch", method_kwargs=dict(lr=0.01, warmup_epochs=0, vpt_dropout=0.0), misspelt="vpt_dropuot"),
    "tcpa": Spec(
        "epoch", method_kwargs=dict(pool_size_cls=3, pool_size_image=3, top_k=2, random_epochs=0, prompt_dropout=0.0,
                                    lr=0.01), misspelt="pool_size_clss",
    ),
    "pvp": Spec("epoch", method_kwargs=dict(n_prompts=2, lr=0.01), misspelt="n_promts"),
    "vptspg": Spec(
        "epoch", method_kwargs=dict(embed_dim=16, n_prompts=2, n_class_prompts=1), misspelt="n_class_promts"
    ),
    "coop": Spec("epoch", clip=True, method_kwargs=dict(n_ctx=2, ctx_init="", lr=0.01, prec="fp32"), misspelt="n_ctxx"),
    "mcm": Spec("epoch", clip=True, method_kwargs=dict(lr=0.01, prec="fp32"), misspelt="temperatur"),
    "cupl": Spec("epoch", clip=True, method_kwargs=dict(variant="both", descriptions="builtin:digits_cupl"),
                 misspelt="variantt", sizes=dict(eval_batch_size=64), **TOP5),
    "fudd": Spec("epoch", clip=True, method_kwargs=dict(k=3), misspelt="kk", sizes=dict(eval_batch_size=64), **TOP5),
    "ipo": Spec("epoch", clip=True, misspelt="per_stepp", sizes=dict(eval_batch_size=64), method_kwargs=dict(
        steps=1, per_step=1, llm=f"scripted:{_LLM_LOGS / 'ipo_digits_script.json'}")),
    "llm_optimizer": Spec("epoch", clip=True, misspelt="top_kk", sizes=dict(eval_batch_size=64), method_kwargs=dict(
        steps=1, llm=f"scripted:{_LLM_LOGS / 'llm_optimizer_digits_script.json'}")),
    "glov": Spec("epoch", clip=True, misspelt="guidanse", sizes=dict(eval_batch_size=64), method_kwargs=dict(
        prompts=str(_LLM_LOGS.parent / "data" / "glov_discovered_prompts.py"), dataset="digits")),
    "glov_search": Spec("epoch", clip=True, misspelt="alpah", sizes=dict(eval_batch_size=64), method_kwargs=dict(
        steps=1, per_step=1, llm=f"scripted:{_LLM_LOGS / 'glov_digits_script.json'}")),
    "proapo": Spec("epoch", clip=True, misspelt="num_topp", sizes=dict(eval_batch_size=64),
                   method_kwargs=dict(templates="tiny_digits", epochs=1, num_top=2, num_add=1, num_remove=1,
                                      num_replace=1, num_mutation=1, num_crossover=1, epochs_outer=0)),
    "pacbayes": Spec("epoch", clip=True, misspelt="max_wordss", sizes=dict(eval_batch_size=64),
                     method_kwargs=dict(words=("small", "digit"), max_words=1)),
    "lapt": Spec(
        "epoch", clip=True, misspelt="n_negativs",
        method_kwargs=dict(lr=0.01, prec="fp32", n_negatives=4, n_negatives_train=3, groups=2,
                           nouns=("shirt", "coat", "bag", "tree"), adjectives=("red", "small")),
    ),
    "ogen": Spec(
        "epoch", clip=True, misspelt="neighbors",
        method_kwargs=dict(lr=0.01, prec="fp32", new_classnames=("shirt", "coat", "bag", "boot")),
    ),
    "neglabel": Spec(
        "epoch", clip=True, misspelt="n_negativs",
        method_kwargs=dict(lr=0.01, prec="fp32", n_negatives=4, groups=2, nouns=("shirt", "coat", "bag", "tree"),
                           adjectives=("red", "small")),
    ),
    "cocoop": Spec("epoch", clip=True, method_kwargs=dict(lr=0.01, prec="fp32"), misspelt="meta_reductoin"),
    "adclip": Spec("epoch", clip=True, method_kwargs=dict(lr=0.01, prec="fp32", n_img_ctx=1, domain_hidden=8,
                                                          style_hidden=8), misspelt="n_img_ctxx"),
    "maple": Spec("epoch", clip=True, method_kwargs=dict(depth=2, lr=0.01, prec="fp32"), misspelt="depht"),
    "promptsrc": Spec(
        "epoch",
        clip=True,
        method_kwargs=dict(depth_text=2, depth_vision=2, lr=0.01, prec="fp32", teacher_templates="hand"),
        misspelt="gpa_meen",
    ),
    "pre": Spec("epoch", clip=True, method_kwargs=dict(lr=0.01, prec="fp32"), misspelt="encodr"),
    "coprompt": Spec(
        "epoch", clip=True, method_kwargs=dict(depth=2, lr=0.01, prec="fp32", descriptions="builtin:digits"),
        misspelt="image_mixx",
    ),
    "msgcoop": Spec(
        "epoch", clip=True, method_kwargs=dict(n_prompts=2, lr=0.01, prec="fp32", descriptions="builtin:digits"),
        misspelt="div_weigth",
    ),
    "glad": Spec("epoch", clip=True, method_kwargs=dict(lr=0.01, prec="fp32"), misspelt="rhoo"),
    "dpl": Spec("epoch", clip=True, method_kwargs=dict(n_vis=2, depth=2, lr=0.01, prec="fp32"), misspelt="n_viss"),
    "gram": Spec(
        "epoch", clip=True, misspelt="meta_iter",
        method_kwargs=dict(meta_data="generated", meta_image_clusters=2, meta_text_clusters=2, meta_iters=1,
                           meta_batch=1, lr=0.01, prec="fp32"),
    ),  # fmt: skip
    "tmml": Spec("epoch", clip=True, method_kwargs=dict(lr=0.01, prec="fp32"), misspelt="meta_reductoin"),
    "kapt": Spec(
        "epoch", clip=True, method_kwargs=dict(lr=0.01, prec="fp32", descriptions="builtin:digits"),
        misspelt="n_keyword",
    ),
    "disa": Spec(
        "epoch", clip=True, method_kwargs=dict(depth_text=2, depth_vision=2, teacher_templates="hand", gpa_mean=1.0,
                                               lr=0.01, prec="fp32"), misspelt="keep_ratoi",
    ),
    "coop_atp": Spec(
        "epoch", clip=True, method_kwargs=dict(attributes=("shape",), lr=0.01, prec="fp32"), misspelt="n_attt"
    ),
    "apt": Spec("epoch", clip=True, method_kwargs=dict(memory=8, rank=2, lr=0.01, prec="fp32"), misspelt="memroy"),
    "caspl": Spec(
        "epoch", clip=True, misspelt="n_bost",
        method_kwargs=dict(n_boost=2, n_ctx_text=2, n_ctx_vision=2, depth_text=2, depth_vision=2, boost_epochs=1,
                           teacher_model="ctta-tiny-clip", teacher_pretrained="", lr=0.01, prec="fp32"),
    ),  # fmt: skip
    "mocoop": Spec(
        "epoch", clip=True, method_kwargs=dict(groups=("a photo of a {}.", "a blurry photo of a {}."), lr=0.01,
                                               prec="fp32"), misspelt="gate_weigth",
    ),
    "maple_atp": Spec(
        "epoch",
        clip=True,
        method_kwargs=dict(attributes=("shape",), n_att=2, n_ctx=2, depth=2, lr=0.01, prec="fp32"),
        misspelt="n_attt",
    ),
    "restore": Spec("epoch", clip=True, method_kwargs=dict(depth=2, lr=0.0035, prec="fp32"), misspelt="fs_loss_rr"),
    "mvlpt": Spec("epoch", clip=True, method_kwargs=dict(n_ctx=2, lr=0.01, prec="fp32"), misspelt="token_mixng"),
    "hicropl": Spec(
        "epoch",
        clip=True,
        method_kwargs=dict(n_ctx=2, depth=2, cross_layer=1, descriptions=("builtin:digits",), lr=0.01, prec="fp32"),
        misspelt="cross_layr",
    ),
    "tpt": Spec("tta", clip=True, method_kwargs=dict(selection_p=0.25), misspelt="selection_pp", **TOP5),
    "tfup": Spec("tta", clip=True, misspelt="alpah", sizes=dict(batch_size=5)),
    "tfup_t": Spec("tta", clip=True, method_kwargs=dict(epochs=2, warmup_epochs=1), misspelt="epoch",
                   sizes=dict(batch_size=5)),
    "difftpt": Spec(
        "tta",
        clip=True,
        method_kwargs=dict(n_diffusion_views=N_DIFFUSION, tta_steps=1),
        misspelt="n_diffusion_view",
        **TOP5,
    ),
}


def user_model(name: str, cache_dir: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model, method_kwargs)`` for strategy ``name``: the user's backbone and the tiny method settings.

    CLIP methods also get what an Avalanche benchmark cannot supply: the tokenizer and the class names.
    """
    spec = SPECS[name]
    kwargs = dict(spec.method_kwargs)
    if not spec.clip:
        return tiny_vit(), kwargs
    model, tokenizer = tiny_clip()
    kwargs.update(tokenizer=tokenizer, classnames=classnames())
    if name == "difftpt":
        from tests._tiny_diffusion import tiny_diffusion_config

        kwargs["diffusion"] = tiny_diffusion_config(cache_dir)
    return model, kwargs


def avalanche_kwargs(name: str, evaluator) -> dict[str, Any]:
    """Avalanche's template arguments with small sizes (test-time methods: ``eval_mb_size`` samples per step)."""
    tta = SPECS[name].family == "tta"
    return dict(
        optimizer=None,
        criterion=None,
        train_mb_size=32,
        train_epochs=1,
        eval_mb_size=5 if tta else 64,
        device="cpu",
        plugins=[],
        evaluator=evaluator,
        eval_every=-1,
    )


def data_for(name: str):
    """``(train, test)`` torch datasets of the kind the strategy consumes (CLIP prompt learners: a few shots)."""
    spec = SPECS[name]
    if spec.family == "tta":
        ds = views()
        return ds, ds
    return digits(40, 40) if spec.clip else digits()


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def identical(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors of ``module`` that differ from ``before`` (empty: bit-identical)."""
    now = module.state_dict()
    return [k for k in before if not torch.equal(now[k], before[k])] + sorted(set(now) - set(before))
