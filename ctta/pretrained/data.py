"""Pretraining data of the shipped backbones: Fashion-MNIST (Debian's ``dataset-fashion-mnist``) and sklearn digits.

Fashion-MNIST (Xiao et al. 2017, MIT licence; 60,000 train / 10,000 test 28x28 grey images, 10 clothing classes)
installs offline with ``apt-get install dataset-fashion-mnist`` into ``/usr/share/datasets/fashion-mnist`` (IDX
files, gzip). ``CTTA_FASHION_MNIST`` or the recipe's ``--fashion-mnist`` point elsewhere. Images are resized to
32 px (bilinear) and kept in [0, 1] with one channel; models see 3 replicated channels.

Augmentations run on whole batches with a ``torch.Generator`` (reproducible from the recipe's seed):
``low_res`` imitates the digits (8x8 images upsampled to 32 px) by area-downsampling part of a batch to 7-14 px and
upsampling it back; ``shift_flip`` is a padded random crop plus horizontal flip; ``resized_crop`` a random
scale/translation/flip by an affine grid (the CLIP's augmentation, close to TPT's test-time views).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FASHION_MNIST_DIR",
    "load_fashion_mnist",
    "load_digits_tensors",
    "write_idx",
    "low_res",
    "shift_flip",
    "resized_crop",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX array (unsigned bytes) from a gzip file."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an unsigned-byte array as a gzip IDX file (the format ``load_fashion_mnist`` reads)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write(header + array.tobytes())


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$CTTA_FASHION_MNIST``, else Debian's install folder."""
    return Path(root or os.environ.get("CTTA_FASHION_MNIST") or FASHION_MNIST_DIR).expanduser()


def load_fashion_mnist(split: str = "train", root=None, limit: int = 0, img_size: int = 32):
    """Fashion-MNIST images ``(N, 1, S, S)`` in [0, 1] and labels ``(N,)``.

    Args:
        split: ``train`` (60,000) or ``test`` (10,000).
        root: folder of the IDX files (default: see ``fashion_mnist_dir``).
        limit: keep the first ``limit`` images (0 = all).
        img_size: output side (bilinear resize from 28 px).

    Raises:
        FileNotFoundError: the files are missing; the message says how to install them.
    """
    folder = fashion_mnist_dir(root)
    paths = [folder / _FILES[split].format(kind, n) for kind, n in (("images", 3), ("labels", 1))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({', '.join(missing)}). Install it offline with `apt-get install "
            f"dataset-fashion-mnist` (files in {FASHION_MNIST_DIR}), or set CTTA_FASHION_MNIST / --fashion-mnist"
        )
    images, labels = (_read_idx(p) for p in paths)
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_digits_tensors(split: str = "train", img_size: int = 32):
    """sklearn digits of ``split`` as ``(N, 1, S, S)`` in [0, 1] and labels, with ctta's fixed train/test split."""
    from ctta.data.digits import load_digits

    ds = load_digits(img_size=img_size, channels=1)[0 if split == "train" else 1]
    return ds.images, torch.tensor(ds.targets, dtype=torch.long)


def low_res(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Area-downsample a random ``p`` fraction of the batch to 7-14 px and upsample it back (bilinear)."""
    pick = torch.rand(len(x), generator=g) < p
    if p <= 0 or not bool(pick.any()):
        return x
    size = int(torch.randint(7, 15, (1,), generator=g))
    small = F.interpolate(x[pick], size=(size, size), mode="area")
    out = x.clone()
    out[pick] = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    return out


def shift_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded batch (one offset per batch) and a horizontal flip per image."""
    h, w = x.shape[-2:]
    i, j = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    x = F.pad(x, (pad, pad, pad, pad))[..., i : i + h, j : j + w]
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def resized_crop(x: torch.Tensor, g: torch.Generator, min_scale: float = 0.3, flip: bool = True) -> torch.Tensor:
    """Per-image random crop of ``min_scale``-1 of the area, resized back (affine grid), optional flip."""
    b = len(x)
    s = torch.empty(b).uniform_(min_scale, 1.0, generator=g).sqrt()  # side fraction
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = s, s
    theta[:, :, 2] = (torch.rand(b, 2, generator=g) * 2 - 1) * (1 - s)[:, None]
    if flip:
        theta[:, 0, 0] *= torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
