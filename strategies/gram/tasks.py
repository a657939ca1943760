"""GRAM's meta-training data: image-text pairs, their frozen CLIP features and the meta-tasks formed by cross-modal
hierarchical clustering (Li et al., ICCV 2023, arXiv 2303.06571; unofficial, from the paper).

Pairs come from the user's file (``meta_data: <file>``): JSON lines ``{"image": <path>, "caption": <text>}`` or a CSV
with ``image`` and ``caption`` columns (CC3M-like; relative image paths are read from the file's folder), or from
``meta_data: generated`` (smoke runs and tests): ctta's generated multi-label images
(``ctta.data.multilabel_datasets.make_synthetic_multilabel``: smooth colour patterns, nothing in common with the
evaluation datasets' images) captioned from their labels, ``"a pattern of <w_1> and <w_2>"`` with the words of
``GENERATED_WORDS`` (no digit or class name of an evaluation dataset).

Tasks (``cluster_tasks``): k-means (scikit-learn) on the L2-normalised image features into ``n_image`` clusters, then
k-means on the text features inside each image cluster into ``n_text`` sub-clusters; each leaf is one meta-task, so
``n_image * n_text`` tasks when every image cluster holds at least ``n_text`` pairs (leaves of fewer than two pairs,
which cannot give a support and a query pair, are dropped).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctta.data.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

__all__ = [
    "GENERATED_WORDS",
    "ImageTextPairs",
    "cluster_tasks",
    "generated_pairs",
    "pair_features",
    "read_pairs",
    "require_pairs_file",
]

#: caption words of the generated pairs, one per generated label
GENERATED_WORDS = ("red", "green", "blue", "stripes", "dots", "waves", "grass", "sky", "sand", "stone", "wood", "fire")


class ImageTextPairs:
    """Image-text pairs: ``images`` (a ``(N, 3, S, S)`` tensor, CLIP-normalised) or image paths, and ``captions``."""

    def __init__(self, images, captions: list[str], source: str) -> None:
        if len(images) != len(captions) or not captions:
            raise ValueError(f"{source}: {len(images)} images and {len(captions)} captions (need as many, >= 1)")
        self.images, self.captions, self.source = images, list(captions), source

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, idx: list[int], img_size: int) -> torch.Tensor:
        """Images ``idx`` as a normalised ``(B, 3, S, S)`` tensor (files read and resized + centre-cropped)."""
        if isinstance(self.images, torch.Tensor):
            x = self.images[idx]
            return x if x.shape[-1] == img_size else F.interpolate(x, size=(img_size, img_size), mode="bilinear")
        from torchvision import transforms as T

        from ctta.data.folder import default_transform, load_rgb

        tf = T.Compose([default_transform(img_size), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
        return torch.stack([tf(load_rgb(self.images[i])) for i in idx])


def generated_pairs(n: int = 240, img_size: int = 32, seed: int = 0) -> ImageTextPairs:
    """``n`` generated multi-label images captioned from their labels (see the module docstring)."""
    from ctta.data.multilabel_datasets import make_synthetic_multilabel

    k = len(GENERATED_WORDS)
    train, _ = make_synthetic_multilabel(k, n_train=n, n_test=k, img_size=img_size, max_labels=2, seed=seed)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
    images = (torch.stack(list(train.items)) - mean) / std  # (n, 3, S, S)
    captions = ["a pattern of " + " and ".join(GENERATED_WORDS[c] for c in labels) for labels in train.label_sets]
    return ImageTextPairs(images, captions, "generated")


def require_pairs_file(path: str) -> Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` naming the ``meta_data`` setting when there is no such file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"meta_data: no such file {str(p)!r} (GRAM's meta-training pairs: a .jsonl of {{'image': path, "
            "'caption': text} lines or a .csv with image,caption columns; 'generated' for the generated set)"
        )
    return p


def read_pairs(path: str) -> ImageTextPairs:
    """Pairs from a JSONL (``{"image", "caption"}`` per line) or CSV (``image``, ``caption`` columns) file."""
    p = require_pairs_file(path)
    if p.suffix.lower() == ".csv":
        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    if not rows or not {"image", "caption"} <= set(rows[0]):
        raise ValueError(f"meta_data {str(p)!r}: needs 'image' and 'caption' fields")
    images = [str(p.parent / r["image"]) if not Path(r["image"]).is_absolute() else r["image"] for r in rows]
    return ImageTextPairs(images, [str(r["caption"]) for r in rows], str(p))


@torch.no_grad()
def pair_features(clip, tokenizer, pairs: ImageTextPairs, device, batch: int = 64) -> tuple[torch.Tensor, ...]:
    """L2-normalised frozen image and text (plain caption) features ``(N, E)`` each, in fp32 on ``device``."""
    size = clip.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    dtype = next(clip.parameters()).dtype
    img, txt = [], []
    for i in range(0, len(pairs), batch):
        idx = list(range(i, min(i + batch, len(pairs))))
        img.append(clip.encode_image(pairs.batch(idx, size).to(device, dtype)).float())
        txt.append(clip.encode_text(tokenizer([pairs.captions[j] for j in idx]).to(device)).float())
    return F.normalize(torch.cat(img), dim=-1), F.normalize(torch.cat(txt), dim=-1)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(np.unique(x, axis=0))))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)


def cluster_tasks(image_feats, text_feats, n_image: int, n_text: int, seed: int = 0) -> list[np.ndarray]:
    """Meta-tasks (arrays of pair indices) by cross-modal hierarchical clustering (see the module docstring)."""
    f = np.asarray(image_feats, dtype=np.float64)
    t = np.asarray(text_feats, dtype=np.float64)
    tasks = []
    top = _kmeans(f, n_image, seed)
    for c in np.unique(top):
        members = np.flatnonzero(top == c)
        sub = _kmeans(t[members], n_text, seed)
        tasks += [members[sub == s] for s in np.unique(sub)]
    return [task for task in tasks if len(task) >= 2]
