"""TCPA's Stanford Cars pipeline (zhoujiahuan1991/ICML2025-TCPA @ dce8b3a ``data_utils/transforms.py``): AutoAugment
(ImageNet policy) after the flip, on the train images only, switched by the class_incremental scenario's
``autoaugment`` and used by the ``stanford-cars`` entry of configs/tcpa.yaml."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ctta.scenarios.class_incremental import ClassIncrementalConfig, build_class_incremental, image_transforms
from PIL import Image
from torchvision import transforms as T

from ctta.runner.config import load_config
from tests.helpers import ROOT


def _steps(tf) -> list:
    """The flat list of transform steps of a (nested) Compose."""
    if tf is None:
        return []
    if isinstance(tf, T.Compose):
        return [s for t in tf.transforms for s in _steps(t)]
    return [tf]


def _autoaugments(tf) -> list:
    return [s for s in _steps(tf) if isinstance(s, T.AutoAugment)]


def _photo(w: int = 50, h: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("transform", ["default", "promptcam", "damvp"])
@pytest.mark.parametrize("bundled", [False, True])
def test_autoaugment_only_when_switched_on_and_only_for_training(transform, bundled):
    off = image_transforms(16, "imagenet", transform, bundled)
    assert not any(_autoaugments(t) for t in off)  # default unchanged: never
    train, test = image_transforms(16, "imagenet", transform, bundled, autoaugment=True)
    (aug,) = _autoaugments(train)
    assert aug.policy == T.AutoAugmentPolicy.IMAGENET and not _autoaugments(test)
    assert [type(s) for s in _steps(test)] == [type(s) for s in _steps(off[1])]  # the test pipeline as before


def test_damvp_autoaugment_sits_after_the_flip_before_to_tensor():
    train, _ = image_transforms(224, "imagenet", "damvp", autoaugment=True)
    names = [type(s).__name__ for s in _steps(train)]
    assert names == ["Resize", "RandomCrop", "RandomHorizontalFlip", "AutoAugment", "ToTensor", "Normalize"]


@pytest.mark.parametrize("transform", ["default", "promptcam", "damvp"])
def test_output_sizes_with_autoaugment(transform):
    train, test = image_transforms(24, "imagenet", transform, autoaugment=True)
    torch.manual_seed(0)
    for _ in range(5):  # several random sub-policies
        x = train(_photo())
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert test(_photo()).shape == (3, 24, 24)
    train_t, _ = image_transforms(8, "none", "default", bundled=True, autoaugment=True)
    for _ in range(5):  # bundled tensors: through uint8 and back to [0, 1] floats
        x = train_t(torch.rand(3, 8, 8))
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_digits_stream_augments_train_only():
    cfg = ClassIncrementalConfig(dataset="digits", n_experiences=1, img_size=8)
    plain = build_class_incremental(cfg, seed=0)
    aug = build_class_incremental(ClassIncrementalConfig(**{**cfg.__dict__, "autoaugment": True}), seed=0)
    assert torch.equal(aug.test_stream[0].dataset[3][0], plain.test_stream[0].dataset[3][0])
    torch.manual_seed(1)
    xs = [aug.train_stream[0].dataset[0][0] for _ in range(8)]
    assert all(x.shape == plain.train_stream[0].dataset[0][0].shape for x in xs)
    assert any(not torch.equal(x, plain.train_stream[0].dataset[0][0]) for x in xs)  # augmented at least once


def test_tcpa_config_switches_autoaugment_on_stanford_cars_only():
    for name in ("stanford-cars", "cub200", "stanford-dogs", "svhn"):
        sc = load_config(ROOT / "configs/tcpa.yaml", [f"scenario.dataset={name}"]).scenario.params
        assert sc.autoaugment == (name == "stanford-cars")
        assert (sc.normalize, sc.transform) == ("imagenet", "damvp")
