"""The OOD scenario: streams and roles on the tiny digits benchmark (held-out classes as near OOD, generated far OOD,
covariate-shifted ID), an OpenOOD-layout folder read through the catalogue, and the errors for unknown sets."""

from __future__ import annotations

import pytest
import torch
from ctta.scenarios.ood import OODConfig, build_ood

from ctta.data import catalogue
from tests.helpers import save_rgb

TINY = dict(dataset="digits", shots=2, id_classes=5, near=(), img_size=32, max_test=12)


def test_digits_benchmark_streams_roles_and_labels():
    bench = build_ood(OODConfig(**TINY, held_out_near=True, far=("noise",), csid_corruptions=("gaussian_noise",)))
    names = [s.name for s in bench.streams.values()]
    assert names == ["train", "valid", "test", "test_csid_gaussian_noise_3", "test_near_digits_held_out",
                     "test_far_noise"]  # fmt: skip
    assert bench.info.classnames == ("zero", "one", "two", "three", "four")
    assert set(bench.info.stream_classnames) == set(names)  # every stream keeps the ID text head
    labels = {s.name: torch.as_tensor(list(s[0].dataset.targets)) for s in bench.streams.values()}
    assert labels["train"].unique().tolist() == [0, 1, 2, 3, 4] and len(labels["train"]) == 10
    assert (labels["test"] < 5).all() and (labels["test_csid_gaussian_noise_3"] == labels["test"]).all()
    assert (labels["test_near_digits_held_out"] == -1).all() and (labels["test_far_noise"] == -1).all()
    first = {k: bench.streams[k][0].dataset[0][0] for k in ("test", "test_csid_gaussian_noise_3")}
    clean, shifted = first.values()
    assert clean.shape == shifted.shape and not torch.equal(clean, shifted)


def test_openood_image_list_is_read_from_the_folder(tmp_path):
    root = tmp_path / "openood"
    for k in range(3):
        save_rgb(root / "images_largescale" / "ninco" / f"{k}.png", colour=(10 * k, 0, 0), size=(40, 40))
    lst = root / "benchmark_imglist" / "imagenet" / "test_ninco.txt"
    lst.parent.mkdir(parents=True)
    lst.write_text("".join(f"ninco/{k}.png -1\n" for k in range(3)))
    items = catalogue.load("ninco", "ood", tmp_path)
    assert [p for p, _ in items] == [str(root / "images_largescale" / "ninco" / f"{k}.png") for k in range(3)]
    bench = build_ood(OODConfig(**{**TINY, "near": ("ninco",)}, root=str(tmp_path), far=()))
    x, y = bench.streams["test_near_ninco"][0].dataset[0][:2]
    assert x.shape == (3, 32, 32) and y == -1


def test_missing_openood_folder_and_unknown_sets_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="OpenOOD"):
        build_ood(OODConfig(**{**TINY, "near": ("ssb_hard",)}, root=str(tmp_path), far=()))
    with pytest.raises(ValueError, match="unknown OOD dataset"):
        OODConfig(**{**TINY, "far": ("not_a_set",)})
    with pytest.raises(ValueError, match="held_out_near needs id_classes"):
        OODConfig(dataset="digits", held_out_near=True)
