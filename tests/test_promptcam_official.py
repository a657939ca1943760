"""Prompt-CAM's official data pipeline through the class-incremental scenario (normalisation choices on hand-made
images, the default left as it was, the train/test transform sizes), its official-dataset config, and the Birds-525
folder reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ctta.scenarios.class_incremental import NORMALIZE, ClassIncrementalConfig, image_transforms
from PIL import Image
from torchvision.transforms import functional as TF

from ctta.data import catalogue
from ctta.data.digits import load_digits
from ctta.data.folder import default_transform
from ctta.registry import SCENARIOS
from ctta.runner.config import load_config
from tests.helpers import ROOT, save_rgb

STATS = {  # written out by hand (Inception = 0.5; ImageNet; OpenAI CLIP)
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def _image() -> torch.Tensor:
    return torch.tensor([[[0.0, 1.0], [0.25, 0.5]], [[0.1, 0.2], [0.3, 0.4]], [[1.0, 0.0], [0.75, 0.6]]])  # (3, 2, 2)


@pytest.mark.parametrize("name", sorted(STATS))
def test_each_normalisation_choice_on_a_hand_made_image(name):
    x = _image()
    mean, std = STATS[name]
    want = torch.stack([(x[c] - mean[c]) / std[c] for c in range(3)])
    train, test = image_transforms(2, name, "default", bundled=True)  # tensors: normalise only
    torch.testing.assert_close(train(x), want)
    torch.testing.assert_close(test(x), want)
    pil = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    files, _ = image_transforms(2, name, "default")  # file images: resize, centre crop, to tensor, normalise
    raw = TF.to_tensor(pil)
    torch.testing.assert_close(files(pil), torch.stack([(raw[c] - mean[c]) / std[c] for c in range(3)]))


def test_default_pipeline_is_unchanged():
    assert ClassIncrementalConfig().normalize == "none" and ClassIncrementalConfig().transform == "default"
    assert image_transforms(8, bundled=True) == (None, None)  # the digits tensors pass untouched
    pil = Image.new("RGB", (12, 9), (10, 200, 30))
    tr, te = image_transforms(8)
    torch.testing.assert_close(tr(pil), default_transform(8)(pil))
    torch.testing.assert_close(te(pil), default_transform(8)(pil))
    build = SCENARIOS.get("class_incremental").builder
    plain = build(ClassIncrementalConfig(n_experiences=1, img_size=8), seed=0)
    assert plain.info.normalization is None
    train, _ = load_digits(img_size=8)
    torch.testing.assert_close(plain.train_stream[0].dataset[0][0], train[0][0])
    inc = build(ClassIncrementalConfig(n_experiences=1, img_size=8, normalize="inception"), seed=0)
    assert inc.info.normalization == STATS["inception"]
    torch.testing.assert_close(inc.train_stream[0].dataset[0][0], train[0][0] * 2 - 1)


def test_unknown_choices_are_refused():
    with pytest.raises(ValueError, match=r"scenario.normalize='half'; valid: \['clip', 'imagenet', 'inception'"):
        image_transforms(8, "half")
    with pytest.raises(ValueError, match="scenario.transform='random'"):
        image_transforms(8, transform="random")
    assert set(NORMALIZE) == {"none", *STATS}


@pytest.mark.parametrize("size, big", [(224, 240), (32, 34)])
def test_promptcam_transform_sizes(size, big):
    train, test = image_transforms(size, "inception", "promptcam")
    assert [type(t).__name__ for t in train.transforms] == [
        "Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"
    ]  # fmt: skip
    assert train.transforms[0].size == (big, big) and train.transforms[1].size == (size, size)
    assert [type(t).__name__ for t in test.transforms] == ["Resize", "ToTensor", "Normalize"]
    assert test.transforms[0].size == (size, size)
    pil = Image.new("RGB", (300, 170), (40, 90, 200))
    assert train(pil).shape == test(pil).shape == (3, size, size)


def test_promptcam_train_image_is_a_crop_of_the_square_resize():
    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 256, (20, 26, 3), dtype=np.uint8))
    train, test = image_transforms(14, "none", "promptcam")  # 14 px: resize to 15 x 15, crop 14
    full = TF.to_tensor(TF.resize(pil, [15, 15]))
    windows = [w for i in range(2) for j in range(2) for w in (full[:, i:i + 14, j:j + 14],
                                                               full[:, i:i + 14, j:j + 14].flip(-1))]  # fmt: skip
    torch.manual_seed(0)
    for _ in range(4):
        out = train(pil)
        assert any(torch.equal(out, w) for w in windows)
    torch.testing.assert_close(test(pil), TF.to_tensor(TF.resize(pil, [14, 14])))  # no crop: both sides resized


def test_damvp_transform_is_the_reference_pipeline_without_its_normalisation():
    train, test = image_transforms(224, "imagenet", "damvp")
    assert [type(t).__name__ for t in train.transforms] == [
        "Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"
    ]  # fmt: skip
    assert [type(t).__name__ for t in test.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert train.transforms[0].size == test.transforms[0].size == 256  # shorter side, as TCPA's resize_dim 256
    pil = Image.new("RGB", (300, 170), (40, 90, 200))
    torch.testing.assert_close(test(pil), TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(pil, 256), 224)),
                                                       *STATS["imagenet"]))  # fmt: skip


def test_official_config_datasets_and_recipe():
    want = {"cub200": (0.005, 130), "stanford-cars": (0.01, 100), "stanford-dogs": (0.005, 100),
            "imagefolder:pets": (0.005, 100), "birds525": (0.01, 100)}  # fmt: skip
    for name, (lr, epochs) in want.items():
        cfg = load_config(ROOT / "configs/promptcam.yaml", [f"scenario.dataset={name}"])
        sc = cfg.scenario.params
        assert (sc.normalize, sc.transform, sc.img_size) == ("inception", "promptcam", 224)
        assert (cfg.strategy.params.lr, cfg.strategy.params.epochs) == (lr, epochs)
        catalogue.entry(name, ("cl", "transfer"))  # a dataset the scenario reads
    smoke = load_config(ROOT / "configs/smoke/promptcam_digits.yaml").scenario.params
    assert (smoke.normalize, smoke.transform) == ("none", "default")  # the recorded smoke run keeps its inputs


def test_birds525_reads_the_kaggle_layout(tmp_path):
    entry = catalogue.entry("birds525", "transfer")
    with pytest.raises(FileNotFoundError, match=r"birds525/\{train,valid,test\}/<SPECIES>"):
        entry.load("transfer", tmp_path)
    for split, n in (("train", 2), ("valid", 1), ("test", 1)):
        for k, species in enumerate(("ABBOTTS BABBLER", "ZEBRA DOVE")):
            for i in range(n):
                save_rgb(tmp_path / "birds525" / split / species / f"{i}.jpg", (10 * k, 20, 30))
    data = entry.load("transfer", tmp_path)
    assert data.classnames == ["ABBOTTS BABBLER", "ZEBRA DOVE"]
    assert (len(data.train), len(data.val), len(data.test)) == (4, 2, 2)
    assert data.test.targets == [0, 1]
    cfg = ClassIncrementalConfig(dataset="birds525", root=str(tmp_path), n_experiences=1, img_size=16,
                                 normalize="inception", transform="promptcam")  # fmt: skip
    bench = SCENARIOS.get("class_incremental").builder(cfg, seed=0)  # the official config's pipeline, end to end
    x, y = bench.train_stream[0].dataset[0][:2]
    assert x.shape == (3, 16, 16) and int(y) == 0 and bench.info.normalization == STATS["inception"]
    want = torch.tensor([0.0, 20.0, 30.0]).div(255).mul(2).sub(1).view(3, 1, 1).expand_as(x)  # (RGB / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, want, atol=4 / 255, rtol=0)  # JPEG rounding of a plain colour
