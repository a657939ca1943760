"""OOD test sets (catalogue kind ``ood``): OpenOOD's image lists, Fashion-MNIST, and generated noise images.

Each loader returns a list of ``(image path or (3, S, S) tensor in [0, 1], -1)`` test items (label -1: not an ID
class). Layout of the OpenOOD sets: OpenOOD v1.5 (Jingkang50/OpenOOD ``scripts/download/download.py`` and
``configs/datasets/imagenet/imagenet_ood.yml``): ``<root>/benchmark_imglist/<benchmark>/test_<name>.txt`` lists
``<relative path> <label>`` lines, the images live under ``<root>/images_largescale/`` (ImageNet benchmarks) or
``<root>/images_classic/`` (CIFAR benchmarks); ``<root>`` is OpenOOD's ``data`` folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["load_fashion_mnist_ood", "load_noise_ood", "load_openood", "read_imglist"]


def read_imglist(path: Path, image_dir: Path) -> list[tuple[str, int]]:
    """``(image path, label)`` items of an OpenOOD image list (``<relative path> <label>`` per line)."""
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, _, label = line.strip().rpartition(" ")
            rel = rel or label  # a line without a label
            items.append((str(image_dir / rel), int(label) if rel != label else -1))
    return items


def load_openood(entry, root, benchmark: str = "", **_) -> list[tuple[str, int]]:
    """The OOD set ``entry.extra["set"]`` of OpenOOD's ``benchmark`` (default: the entry's) as ``(path, -1)`` items."""
    benchmark = benchmark or entry.extra.get("benchmark", "imagenet")
    base = entry.require(entry.locate(root))
    lst = base / "benchmark_imglist" / benchmark / f"test_{entry.extra['set']}.txt"
    if not lst.is_file():
        raise FileNotFoundError(f"{entry.title}: no image list {lst}. {entry.how_to_get()}")
    images = base / ("images_largescale" if benchmark.startswith("imagenet") else "images_classic")
    return [(p, -1) for p, _ in read_imglist(lst, images)]


def load_fashion_mnist_ood(entry, root=None, img_size: int = 32, limit: int = 0, **_) -> list[tuple[torch.Tensor, int]]:
    """Fashion-MNIST test images (3 channels, ``img_size`` px) from Debian's ``dataset-fashion-mnist`` (or the folder
    in ``CTTA_FASHION_MNIST``) as far-OOD items."""
    from ctta.pretrained.data import load_fashion_mnist

    x, _ = load_fashion_mnist("test", None, limit, img_size=img_size)  # (N, 1, S, S)
    return [(img.expand(3, -1, -1).contiguous(), -1) for img in x]


def load_noise_ood(entry, root=None, img_size: int = 32, limit: int = 0, seed: int = 0, **_) -> list:
    """Generated far-OOD images (no download; tests and smoke runs): half uniform noise, half smooth random blobs
    (low-resolution noise upsampled), from a generator seeded with ``seed``."""
    n = limit or 200
    g = torch.Generator().manual_seed(seed)
    uniform = torch.rand(n - n // 2, 3, img_size, img_size, generator=g)
    coarse = torch.rand(n // 2, 3, 4, 4, generator=g)
    blobs = torch.nn.functional.interpolate(coarse, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return [(img, -1) for img in torch.cat([uniform, blobs])]
