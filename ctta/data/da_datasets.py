"""Domain-adaptation datasets (catalogue kind ``domain_adaptation``): one domain of Office-Home, Office-31, VisDA-2017,
DomainNet, or ctta's generated digits shift, as ``{"train"|"test": [(image path or tensor, label, classname), ...]}``
(the items of the ``few_shot`` kind, so the scenarios share one reader).

Folder layouts are Dassl's (KaiyangZhou/Dassl.pytorch ``DATASETS.md``), the ones the TFUP (wlb12345/TFUP@d95d4d3
``read_data.py``, ``DATASETS.md``) and AD-CLIP (mainaksingha01/AD-CLIP@c82d861, Dassl readers) code read:

* Office-Home ``office_home/{art,clipart,product,real_world}/<class>/*`` and Office-31
  ``office31/{amazon,dslr,webcam}/<class>/*``: classes are the sorted folder names (lower-cased); the whole domain is
  both its train and its test split (the usual UDA protocol: the unlabelled target set is the evaluated one);
* VisDA-2017 ``visda17/{train,validation}/image_list.txt`` (lines ``<class>/<file> <label>``): domain ``synthetic`` is
  ``train/``, ``real`` is ``validation/``; the whole list is both splits; the 12 class names are the official ones;
* DomainNet ``domainnet/<domain>/<class>/*`` with ``domainnet/splits/<domain>_{train,test}.txt`` (lines
  ``<domain>/<class>/<file> <label>``): train and test are the official split lists;
* ``digits_shift``: scikit-learn's digits (bundled), domain ``clean`` or any corruption ctta generates on the fly
  (``ctta.data.corruptions.ON_THE_FLY``) at severity 5, drawn per image from a fixed seed: tests and smoke runs.
"""

from __future__ import annotations

from pathlib import Path

VISDA_CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
                 "skateboard", "train", "truck")  # fmt: skip
SHIFT_SEVERITY = 5  # severity of the generated digits shift


def _check_domain(entry, domain: str) -> str:
    """``domain`` if the entry lists it (``""``: the first listed domain), else ``ValueError`` naming the valid ones."""
    domains = entry.extra.get("domains", ())
    domain = domain or (domains[0] if domains else "")
    if domains and domain not in domains:
        raise ValueError(f"{entry.title}: unknown domain {domain!r}; valid: {list(domains)}")
    return domain


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def load_domain_folders(entry, root, domain: str = "", **_) -> dict[str, list[tuple]]:
    """Office-Home / Office-31: ``<folder>/<domain>/<class>/<image>``; train = test = the whole domain."""
    domain = _check_domain(entry, domain)
    base = entry.require(entry.require(entry.locate(root)) / domain, f"domain {domain!r}")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = [(str(f), y, c.lower().replace("_", " ")) for y, c in enumerate(classes) for f in _files(base / c)]
    return {"train": items, "test": items}


def _read_list(path: Path, base: Path, names=None) -> list[tuple]:
    """``<relative path> <label>`` lines as items; the class name is the path's class folder (or ``names[label]``)."""
    items = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rel, label = line.rsplit(maxsplit=1)
        parts = Path(rel).parts
        name = names[int(label)] if names else parts[-2]
        items.append((str(base / rel), int(label), name.lower().replace("_", " ")))
    return items


def load_visda(entry, root, domain: str = "", **_) -> dict[str, list[tuple]]:
    """VisDA-2017: ``synthetic`` = ``train/image_list.txt``, ``real`` = ``validation/image_list.txt``."""
    domain = _check_domain(entry, domain)
    base = entry.require(entry.locate(root))
    sub = entry.require(base / ("train" if domain == "synthetic" else "validation"), domain)
    items = _read_list(sub / "image_list.txt", sub, VISDA_CLASSES)
    return {"train": items, "test": items}


def load_domainnet(entry, root, domain: str = "", **_) -> dict[str, list[tuple]]:
    """DomainNet: the official ``splits/<domain>_{train,test}.txt`` lists under the dataset folder."""
    domain = _check_domain(entry, domain)
    base = entry.require(entry.locate(root), "")
    out = {}
    for split in ("train", "test"):
        path = base / "splits" / f"{domain}_{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found. {entry.how_to_get()}")
        out[split] = _read_list(path, base)
    return out


def load_digits_shift(entry, root=None, domain: str = "clean", img_size: int = 32, **_) -> dict[str, list[tuple]]:
    """The bundled digits (``clean``) or the digits under one on-the-fly corruption at severity 5."""
    from ctta.data.corruptions import ON_THE_FLY
    from ctta.data.digits import load_digits_splits

    if domain != "clean" and domain not in ON_THE_FLY:
        raise ValueError(f"digits_shift: unknown domain {domain!r}; valid: ['clean', {', '.join(ON_THE_FLY)}]")
    splits = load_digits_splits(None, img_size=img_size)
    train, test = splits["train"] + splits["val"], splits["test"]
    if domain == "clean":
        return {"train": train, "test": test}
    return {"train": _corrupt(train, domain, 0), "test": _corrupt(test, domain, 1)}


def _corrupt(items: list[tuple], name: str, seed: int) -> list[tuple]:
    import numpy as np
    import torchvision.transforms.functional as TF

    from ctta.data.corruptions import corrupt

    out = []
    for i, (x, y, c) in enumerate(items):
        img = corrupt(TF.to_pil_image(x.clamp(0, 1)), name, SHIFT_SEVERITY, np.random.default_rng([seed, i]))
        out.append((TF.to_tensor(img), y, c))
    return out
