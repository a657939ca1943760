"""The dataset catalogue: every dataset a ctta scenario reads, by name, with where it goes and how to get it.

One table (``CATALOGUE``) serves every scenario. An entry names a dataset, the folder(s) it lives in under
``scenario.root``, how to get it (download source and layout; shown when it is missing), and per *kind* of use the
loader that builds it (``"module:function"``, imported on first use and called as ``loader(entry, root, **kw)``).
Scenarios resolve names with ``entry(name, kind)`` / ``load(name, kind, root, **kw)``; the loaders stay in their
modules (``ctta.data.cl_datasets``, ``tta_datasets``, ``transfer_datasets``, ``multilabel_datasets``, ``digits``,
``folder``) and take their folder and message from the entry they are given.

Kinds and what their loaders return:

- ``cl`` (``class_incremental``, ``si_blurry``, ``multilane_cil``): ``(train, test)`` datasets of ``(x, label)``
  with ``.targets`` and ``.classes``; keyword arguments ``train_transform``, ``test_transform`` and loader options.
- ``test_time`` (``test_time``): a ``ctta.data.tta_datasets.TTASet`` (test split, class names, augmentation family).
- ``transfer`` (``transfer``; ``class_incremental`` reads their train/test splits too): a
  ``ctta.data.transfer_datasets.TransferData`` with train/val/test splits.
- ``multilabel`` (``multilabel``): ``(train, test)`` multi-label datasets (``ctta.data.multilabel_datasets``).
- ``few_shot`` (``few_shot``, CoOp's protocol): ``{"train"|"val"|"test": [(image path or tensor, label,
  classname), ...]}`` from CoOp's split files (KaiyangZhou/CoOp@ff61507 ``datasets/*.py``); ImageNet from its
  ``images/{train,val}`` folders (val is the test set, no validation split), FGVC-Aircraft from its own
  ``images_variant_*.txt`` lists, and ImageNet-V2/-Sketch/-A/-R as test-only sets (empty train and val) through
  their test-time loaders: the domain-generalisation targets.
- ``domain_adaptation`` (``domain_adaptation``): one domain (``domain=``) as ``{"train"|"test": [(image path or
  tensor, label, classname), ...]}`` (``ctta.data.da_datasets``: Office-Home, Office-31, VisDA-2017, DomainNet).

An entry may also accept other names (``aliases``: CoOp's ``oxford_pets`` for TPT's ``pets``). A name may have
several kinds (``imagenet_r`` is a CL set and a test-time set in the same folder); the same name
in two kinds with different folders is two entries (``cifar100`` for Si-Blurry in ``cifar-100-python``, for DAM-VP
in ``torchvision_dataset/cifar-100-python``, the folder layouts of the two reference repositories). Names with a
``<field>`` part are families (``vtab-<task>``, ``imagefolder:<dir>``, ``digits/<k>/<n>``): the part fills the
same field of the folder and the message.

Folder layouts follow the reference code the loaders reproduce: moonjunyyy/Si-Blurry@c4024ce (CIFAR-100,
Tiny-ImageNet, ImageNet-R), azshue/TPT@63ecbace ``data/datautils.py`` with CoOp's ``DATASETS.md``
(KaiyangZhou/CoOp) for the test-time sets, shikiw/DAM-VP@dec5821 ``data_utils/`` for the transfer sets and
tdemin16/multi-lane@5ee982c ``continual_datasets.py`` for COCO and VOC.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

KINDS = {
    "cl": "",  # the word in "unknown ... dataset" messages
    "test_time": "test-time ",
    "transfer": "transfer ",
    "multilabel": "multi-label ",
    "few_shot": "few-shot ",
    "ood": "OOD ",
    "domain_adaptation": "domain-adaptation ",
}
_FIELD = re.compile(r"<([a-z]+)>")


@dataclass(frozen=True)
class DatasetStats:
    """Per-dataset constants of the Si-Blurry protocol (moonjunyyy/Si-Blurry@c4024ce ``utils/data_loader.py``).

    Attributes:
        n_classes: number of classes C.
        mean: normalisation mean (RGB).
        std: normalisation std (RGB).
        autoaugment: torchvision ``AutoAugmentPolicy`` value ("cifar10" | "imagenet") or None.
    """

    n_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    autoaugment: str | None


@dataclass(frozen=True)
class DatasetEntry:
    """One catalogue entry (see the module docstring).

    Attributes:
        name: the name scenarios use (``scenario.dataset``); ``<field>`` marks a family.
        title: human-readable name used in messages.
        folders: folders under ``scenario.root`` in search order (the first is the documented one; ``""`` is the
            root itself); empty for bundled or generated data.
        how: how to get it; ``<folder>`` stands for ``<root>/<first folder>``.
        loaders: kind -> ``"module:function"`` building it, called as ``loader(entry, root, **kw)``.
        stats: normalisation and augmentation constants (Si-Blurry sets), else None.
        extra: loader-specific layout facts (split-file names, image sub-folders, augmentation family).
        aliases: other names of this dataset (another reference's spelling), accepted by ``entry``.
    """

    name: str
    title: str
    folders: tuple[str, ...]
    how: str
    loaders: Mapping[str, str]
    stats: DatasetStats | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        """The documented folder under ``scenario.root`` (``""``: the root itself or no folder)."""
        return self.folders[0] if self.folders else ""

    @property
    def bundled(self) -> bool:
        """True for data that ships with a package or is generated (no folder, nothing to download)."""
        return not self.folders

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.loaders)

    def how_to_get(self) -> str:
        """The "how to get it" text with ``<folder>`` filled in."""
        where = "<root>" + (f"/{self.folder}" if self.folder else "")
        return self.how.replace("<folder>", where)

    def path(self, root: str | Path, folder: str | None = None) -> Path:
        """``root / folder`` (default: the documented folder), ``~`` expanded."""
        sub = self.folder if folder is None else folder
        base = Path(root).expanduser()
        return base / sub if sub else base

    def locate(self, root: str | Path) -> Path:
        """The first of ``folders`` that exists under ``root`` (else the documented one, for the error message)."""
        for f in self.folders:
            if self.path(root, f).is_dir():
                return self.path(root, f)
        return self.path(root)

    def require(self, path: str | Path, what: str = "") -> Path:
        """``path`` if it is a directory, else ``FileNotFoundError`` naming this dataset and how to get it."""
        from ctta.data.folder import require_dir

        return require_dir(path, f"{self.title} {what}".strip(), self.how_to_get())

    def resolve(self, name: str) -> DatasetEntry:
        """This entry for ``name``: a family entry with its ``<field>`` parts filled in (else ``self``)."""
        if name == self.name:
            return self
        values = _match(self.name, name)
        if values is None:
            raise KeyError(f"{name!r} is not a member of {self.name!r}")

        def fill(text: str) -> str:
            return _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), text)

        folders = tuple(fill(f) for f in self.folders)
        return replace(self, name=name, title=fill(self.title), folders=folders, how=fill(self.how))

    def load(self, kind: str, root: str | Path, **kwargs: Any):
        """Build the ``kind`` view of this dataset from ``root`` (see the module docstring for what it returns)."""
        if kind not in self.loaders:
            raise KeyError(f"{self.name!r} has no {kind!r} loader; it serves {list(self.loaders)}")
        module, _, fn = self.loaders[kind].partition(":")
        return getattr(importlib.import_module(module), fn)(self, root, **kwargs)


class UnknownDatasetError(KeyError, ValueError):
    """A name that is not in the catalogue for the requested kind (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _match(pattern: str, name: str) -> dict[str, str] | None:
    """Field values if ``name`` fits the family ``pattern`` (``vtab-<task>`` fits ``vtab-eurosat``), else None."""
    if "<" not in pattern:
        return None
    parts = _FIELD.split(pattern)  # literal, field, literal, field, ...
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)" for i, p in enumerate(parts))
    m = re.fullmatch(regex, name)
    return m.groupdict() if m else None


# ---------------------------------------------------------------------------------------------- where to get
# Download sources used by more than one entry (each text is written once).
_CIFAR100 = "Download the python version https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it"
_IMAGENET_R = (
    "Download https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar (https://github.com/hendrycks/imagenet-r) "
    "and extract it so that <folder>/<wnid>/*.jpg exist (200 class folders, 30,000 images)."
)
COOP_DATASETS = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"  # CoOp's folders and split files
_COOP = f"Prepare it as in CoOp's DATASETS.md ({COOP_DATASETS}), including its <split> file, in <folder>."
_COOP_DG = (
    f" CoOp's layout (DATASETS.md, {COOP_DATASETS}), <root>/<coop>, is accepted too; as a few-shot set it is "
    "test-only (a domain-generalisation target in scenario.eval_datasets)."
)
_FGVC_JSON = "Put the images and VPT's train/val/test.json split files (KMnP/vpt, DATASETS) in <folder>/."
_DIGITS = "Bundled with scikit-learn (sklearn.datasets.load_digits): nothing to download."

_CL = "ctta.data.cl_datasets:"
_TTA = "ctta.data.tta_datasets:"
_TR = "ctta.data.transfer_datasets:"
_ML = "ctta.data.multilabel_datasets:"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _fine_grained(name, title, tpt_dir, coop_dir, split, tpt_img, coop_img, aliases=()) -> DatasetEntry:
    """A fine-grained set read through CoOp's split file: its test list for TPT, all splits for CoOp's few-shot
    protocol (TPT folder name first, CoOp's accepted)."""
    how = _COOP.replace("<split>", split)
    return DatasetEntry(
        name, title, tuple(dict.fromkeys((tpt_dir, coop_dir))),
        how + (f" (CoOp's folder name {coop_dir!r} is accepted too.)" if coop_dir != tpt_dir else ""),
        {"test_time": _TTA + "load_fine_grained", "few_shot": _TTA + "load_coop_splits"},
        extra={"split_file": split, "images": (tpt_img, coop_img)}, aliases=aliases,
    )  # fmt: skip


def _imagenet(name, title, folder, how, coop_dir="") -> DatasetEntry:
    """A test set of the ImageNet family: one folder per wnid (or class index, ImageNet-V2). With ``coop_dir`` (the
    folder of CoOp's DATASETS.md, accepted too) it is also a test-only few-shot set (domain generalisation)."""
    if not coop_dir:
        return DatasetEntry(name, title, (folder,), how, {"test_time": _TTA + "load_imagenet_family"})
    return DatasetEntry(
        name, title, (folder, coop_dir), how + _COOP_DG.replace("<coop>", coop_dir),
        {"test_time": _TTA + "load_imagenet_family", "few_shot": _TTA + "load_imagenet_test_only"},
    )  # fmt: skip


_OOD = "ctta.data.ood_datasets:"
_DA = "ctta.data.da_datasets:"
_OPENOOD_HOW = (
    "Download OpenOOD v1.5's benchmark image lists and images (https://github.com/Jingkang50/OpenOOD, "
    "scripts/download/download.py) so that <folder>/benchmark_imglist/imagenet/test_<set>.txt and "
    "<folder>/images_largescale/ exist (scenario.root = the folder holding openood/)."
)
#: OpenOOD v1.5's ImageNet-1k OOD sets: near (SSB-hard, NINCO), far (iNaturalist, Textures, OpenImage-O)
_OPENOOD_SETS = (("ssb_hard", "SSB-hard"), ("ninco", "NINCO"), ("inaturalist", "iNaturalist (OOD subset)"),
                 ("textures", "Textures (DTD)"), ("openimage_o", "OpenImage-O"))  # fmt: skip


def _openood(name, title) -> DatasetEntry:
    how = _OPENOOD_HOW.replace("<set>", name)
    return DatasetEntry(name, f"{title} (OpenOOD)", ("openood", ""), how, {"ood": _OOD + "load_openood"},
                        extra={"set": name, "benchmark": "imagenet"})  # fmt: skip


def _transfer(name, title, folder, how, loader, **extra) -> DatasetEntry:
    return DatasetEntry(name, title, (folder,), how, {"transfer": _TR + loader}, extra=extra)


CATALOGUE: tuple[DatasetEntry, ...] = (
    # --------------------------------------------------------------- continual learning (Si-Blurry, CIL)
    DatasetEntry(
        "cifar100", "CIFAR-100", ("cifar-100-python",), _CIFAR100 + " so that <folder>/{train,test,meta} exist.",
        {"cl": _CL + "load_cifar100_entry"},
        stats=DatasetStats(100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), "cifar10"),
    ),
    DatasetEntry(
        "tinyimagenet", "Tiny-ImageNet", ("tiny-imagenet-200",),
        "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it so that <folder>/{wnids.txt,train,val} "
        "exist.",
        {"cl": _CL + "load_tiny_imagenet_entry"},
        stats=DatasetStats(200, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), "imagenet"),
    ),
    DatasetEntry(
        "imagenet_r", "ImageNet-R", ("imagenet-r", "imagenet-rendition/imagenet-r"),
        _IMAGENET_R + _COOP_DG.replace("<coop>", "imagenet-rendition/imagenet-r"),
        {"cl": _CL + "load_imagenet_r_entry", "test_time": _TTA + "load_imagenet_family",
         "few_shot": _TTA + "load_imagenet_test_only"},
        stats=DatasetStats(200, _IMAGENET_MEAN, _IMAGENET_STD, "imagenet"),
    ),
    DatasetEntry(
        "digits", "scikit-learn digits", (), _DIGITS,
        {"cl": "ctta.data.digits:load_digits_cl", "test_time": _TTA + "load_digits_tta",
         "transfer": _TR + "load_digits", "few_shot": "ctta.data.digits:load_digits_splits"},
        stats=DatasetStats(10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "cifar10"),  # centred [0, 1] images (smoke runs)
    ),
    DatasetEntry(
        "digits/<k>/<n>", "scikit-learn digits, part k of n", (),
        _DIGITS + " The 10 classes are cut into n contiguous groups; group k gets its own colour tint.",
        {"transfer": _TR + "load_digits"},
    ),
    DatasetEntry(
        "folder", "folder dataset", ("",), "Expected <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg.",
        {"cl": "ctta.data.folder:load_folder"},
    ),
    # ---------------------------------------------------------------------- test-time sets (TPT, DiffTPT)
    _imagenet("imagenet", "ImageNet", "ImageNet/val",
              "Put the ILSVRC-2012 validation images in one folder per wnid (<folder>/<wnid>/*.JPEG)."),
    _imagenet("imagenet_a", "ImageNet-A", "imagenet-a",
              "Download imagenet-a.tar from https://github.com/hendrycks/natural-adv-examples and extract it to "
              "<folder>.", "imagenet-adversarial/imagenet-a"),
    _imagenet("imagenet_v2", "ImageNet-V2", "imagenetv2-matched-frequency-format-val",
              "Download imagenetv2-matched-frequency.tar.gz from https://github.com/modestyachts/ImageNetV2 and "
              "extract it to <folder>.", "imagenetv2/imagenetv2-matched-frequency-format-val"),
    _imagenet("imagenet_sketch", "ImageNet-Sketch", "ImageNet-Sketch",
              "Download ImageNet-Sketch from https://github.com/HaohanWang/ImageNet-Sketch and extract it to "
              "<folder> (<folder>/[sketch/ or images/]<wnid>/).", "imagenet-sketch"),
    _fine_grained("flower102", "Flowers-102", "Flower102", "oxford_flowers", "split_zhou_OxfordFlowers.json", "jpg",
                  "jpg", aliases=("oxford_flowers",)),
    _fine_grained("dtd", "DTD", "DTD", "dtd", "split_zhou_DescribableTextures.json", "images", "images"),
    _fine_grained("pets", "Oxford-IIIT Pets", "OxfordPets", "oxford_pets", "split_zhou_OxfordPets.json", "", "images",
                  aliases=("oxford_pets",)),
    _fine_grained("cars", "Stanford Cars", "StanfordCars", "stanford_cars", "split_zhou_StanfordCars.json", "", "",
                  aliases=("stanford_cars",)),
    _fine_grained("ucf101", "UCF101", "UCF101", "ucf101", "split_zhou_UCF101.json", "", "UCF-101-midframes"),
    _fine_grained("caltech101", "Caltech101", "Caltech101", "caltech-101", "split_zhou_Caltech101.json", "",
                  "101_ObjectCategories"),
    _fine_grained("food101", "Food-101", "Food101", "food-101", "split_zhou_Food101.json", "images", "images"),
    _fine_grained("sun397", "SUN397", "SUN397", "sun397", "split_zhou_SUN397.json", "", "SUN397"),
    _fine_grained("eurosat", "EuroSAT", "eurosat", "eurosat", "split_zhou_EuroSAT.json", "", "2750"),
    DatasetEntry(
        "aircraft", "FGVC-Aircraft", ("fgvc_aircraft",),
        "Download FGVC-Aircraft (fgvc-aircraft-2013b, https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/) and put "
        f"its data/ folder at <folder> (variants.txt, images_variant_{{train,val,test}}.txt, images/), as in CoOp's "
        f"DATASETS.md ({COOP_DATASETS}).",
        {"test_time": _TTA + "load_aircraft", "few_shot": _TTA + "load_coop_aircraft"}, aliases=("fgvc_aircraft",),
    ),
    DatasetEntry(
        "imagenet", "ImageNet (CoOp layout)", ("imagenet",),
        f"Prepare it as in CoOp's DATASETS.md ({COOP_DATASETS}): the ILSVRC-2012 train and val images in "
        "<folder>/images/train/<wnid>/ and <folder>/images/val/<wnid>/ (val is the test set; one folder per wnid), "
        "and CoOp's classnames.txt ('<wnid> <class name>' lines, linked there) in <folder>/.",
        {"few_shot": _TTA + "load_coop_imagenet"},
    ),
    DatasetEntry(
        "imagenet_c/<corruption>/<severity>", "ImageNet-C <corruption>/<severity>", ("<corruption>/<severity>",),
        "Download ImageNet-C from https://github.com/hendrycks/robustness and extract it so that "
        "<folder>/<wnid>/*.JPEG exist; scenario.corruption_root names the ImageNet-C folder.",
        {"test_time": _TTA + "load_imagenet_c"},
    ),
    # ------------------------------------------------------------------------------- transfer sets (DAM-VP)
    _transfer("cifar10", "CIFAR-10", "torchvision_dataset/cifar-10-batches-py",
              "Download the python version https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it to "
              "<folder>.", "load_cifar"),
    _transfer("cifar100", "CIFAR-100", "torchvision_dataset/cifar-100-python", _CIFAR100 + " to <folder>.",
              "load_cifar"),
    _transfer("food101", "Food-101", "torchvision_dataset/food-101",
              "Download Food-101 (https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/) and extract it to "
              "<folder> (meta/, images/).", "load_food101"),
    _transfer("svhn", "SVHN", "torchvision_dataset",
              "Download train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/ into "
              "<folder>/.",
              "load_svhn"),
    _transfer("gtsrb", "GTSRB", "torchvision_dataset/gtsrb",
              "Download GTSRB (torchvision layout) to <folder> (GTSRB/Training, GTSRB/Final_Test, GT-final_test.csv).",
              "load_gtsrb"),
    _transfer("dtd", "DTD", "torchvision_dataset/dtd",
              "Download DTD (https://www.robots.ox.ac.uk/~vgg/data/dtd/) and extract it to <folder>/dtd (images/, "
              "labels/).", "load_dtd"),
    _transfer("cub200", "CUB-200-2011", "FGVC/CUB_200_2011", _FGVC_JSON, "load_fgvc_json", images="images"),
    _transfer("nabirds", "NABirds", "FGVC/nabirds", _FGVC_JSON, "load_fgvc_json", images="images"),
    _transfer("oxford-flowers", "Oxford Flowers", "FGVC/OxfordFlower", _FGVC_JSON, "load_fgvc_json", images=""),
    _transfer("stanford-dogs", "Stanford Dogs", "FGVC/Stanford-dogs", _FGVC_JSON, "load_fgvc_json", images="Images"),
    _transfer("stanford-cars", "Stanford Cars", "FGVC/Stanford-cars", _FGVC_JSON, "load_fgvc_json", images=""),
    _transfer("birds525", "Birds-525 (BIRDS 525 SPECIES)", "birds525",
              "Download the Kaggle set 'BIRDS 525 SPECIES - IMAGE CLASSIFICATION' (gpiosenka/100-bird-species) and "
              "extract it so that <folder>/{train,valid,test}/<SPECIES>/*.jpg exist.", "load_imagefolder",
              splits=("train", "valid", "test")),
    _transfer("fgvc-aircraft", "FGVC-Aircraft", "FGVC/fgvc-aircraft-2013b/data",
              "Download FGVC-Aircraft 2013b (https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/) and extract it so "
              "that <folder>/{variants.txt,images} exist.", "load_aircraft"),
    _transfer("vtab-<task>", "VTAB-1k <task>", "vtab-1k/<task>",
              "Export the VTAB-1k task '<task>' (VPT's vtab_prep.py TFDS splits) to <folder>/ as images plus "
              "train800.txt, val200.txt, test.txt with lines 'relative/path label'.", "load_vtab"),
    _transfer("imagefolder:<dir>", "image folder '<dir>'", "<dir>",
              "Expected <root>/<dir>/{train,val,test}/<class>/<image>.", "load_imagefolder"),
    # ----------------------------------------------------------------------------- multi-label (MULTI-LANE)
    DatasetEntry(
        "coco", "MS-COCO 2014", ("", "coco2014", "coco"),
        "Download the MS-COCO 2014 train/val images and annotations (https://cocodataset.org/#download: "
        "train2014.zip, val2014.zip, annotations_trainval2014.zip) and extract them so that "
        "<root>/annotations/instances_train2014.json and <root>/train2014/*.jpg (and val) exist (or the same under "
        "<root>/coco2014 or <root>/coco).",
        {"multilabel": _ML + "load_coco"},
    ),
    DatasetEntry(
        "voc", "PASCAL VOC 2007", ("", "VOC2007", "VOCdevkit/VOC2007"),
        "Download VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar (http://host.robots.ox.ac.uk/pascal/VOC/"
        "voc2007/) and extract both so that <root>/VOCdevkit/VOC2007/{ImageSets/Main,JPEGImages} exist.",
        {"multilabel": _ML + "load_voc"},
    ),
    DatasetEntry(
        "synthetic", "generated multi-label images", (), "Generated in memory (tests and smoke runs): nothing to get.",
        {"multilabel": _ML + "load_synthetic"},
    ),
    # ----------------------------------------------------------------------------- OOD test sets (scenarios/ood.py)
    *(_openood(n, t) for n, t in _OPENOOD_SETS),
    DatasetEntry(
        "fashion_mnist", "Fashion-MNIST (test split)", (),
        "Install Debian's dataset-fashion-mnist (apt install dataset-fashion-mnist) or put the IDX files of "
        "https://github.com/zalandoresearch/fashion-mnist in a folder named by CTTA_FASHION_MNIST.",
        {"ood": _OOD + "load_fashion_mnist_ood"},
    ),
    DatasetEntry(
        "noise", "generated noise images", (), "Generated in memory (tests and smoke runs): nothing to get.",
        {"ood": _OOD + "load_noise_ood"},
    ),
    # ------------------------------------------------- domain adaptation (scenarios/domain_adaptation.py)
    DatasetEntry(
        "office_home", "Office-Home", ("office_home", "OfficeHome"),
        "Download Office-Home (https://www.hemanthdv.org/officeHomeDataset.html) and put its four domains at "
        "<folder>/{art,clipart,product,real_world}/<class>/ (Dassl's layout).",
        {"domain_adaptation": _DA + "load_domain_folders"},
        extra={"domains": ("art", "clipart", "product", "real_world")},
    ),
    DatasetEntry(
        "office31", "Office-31", ("office31", "Office31"),
        "Download Office-31 (https://faculty.cc.gatech.edu/~judy/domainadapt/) and put its domains at "
        "<folder>/{amazon,dslr,webcam}/<class>/ (move the class folders out of each images/ folder; Dassl's layout).",
        {"domain_adaptation": _DA + "load_domain_folders"}, extra={"domains": ("amazon", "dslr", "webcam")},
    ),
    DatasetEntry(
        "visda17", "VisDA-2017", ("visda17", "VisDA17"),
        "Download the VisDA-2017 classification train/ and validation/ sets (http://ai.bu.edu/visda-2017/) and "
        "extract them to <folder>/{train,validation}/ with their image_list.txt files.",
        {"domain_adaptation": _DA + "load_visda"}, extra={"domains": ("synthetic", "real")},
    ),
    DatasetEntry(
        "domainnet", "DomainNet", ("domainnet", "DomainNet"),
        "Download DomainNet (http://ai.bu.edu/M3SDA/: the six domain zips and the *_train.txt / *_test.txt split "
        "files) so that <folder>/<domain>/<class>/ and <folder>/splits/<domain>_{train,test}.txt exist.",
        {"domain_adaptation": _DA + "load_domainnet"},
        extra={"domains": ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")},
    ),
    DatasetEntry(
        "digits_shift", "scikit-learn digits, clean or corrupted", (),
        _DIGITS + " Domains: clean, or any corruption ctta generates on the fly (severity 5).",
        {"domain_adaptation": _DA + "load_digits_shift"},
    ),
)  # fmt: skip

_REGISTERED: list[DatasetEntry] = []


def register(entry: DatasetEntry) -> DatasetEntry:
    """Add a dataset to the catalogue (a user's own loader); a name already served for one of its kinds raises."""
    for kind in entry.loaders:
        if kind not in KINDS:
            raise ValueError(f"{entry.name}: unknown kind {kind!r}; valid: {list(KINDS)}")
        taken = {n for e in entries(kind) for n in (e.name, *e.aliases)}
        for name in {entry.name, *entry.aliases} & taken:
            raise ValueError(f"duplicate dataset name {name!r} for kind {kind!r}")
    _REGISTERED.append(entry)
    return entry


def entries(kind: str | None = None) -> list[DatasetEntry]:
    """Catalogue entries (those serving ``kind``), in catalogue order."""
    return [e for e in (*CATALOGUE, *_REGISTERED) if kind is None or kind in e.loaders]


def names(kinds: str | Iterable[str]) -> list[str]:
    """Names served for ``kinds`` (one kind or several), in catalogue order, without repeats."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    return list(dict.fromkeys(e.name for k in kinds for e in entries(k)))


def entry(name: str, kinds: str | Iterable[str]) -> DatasetEntry:
    """The entry serving ``name`` for the first of ``kinds`` that has it (families resolved).

    Raises:
        UnknownDatasetError: no such name for these kinds (lists the valid ones).
    """
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    for kind in kinds:
        for e in entries(kind):
            if e.name == name or name in e.aliases:
                return e
        for e in entries(kind):
            if _match(e.name, name) is not None:
                return e.resolve(name)
    label = KINDS.get(kinds[0], "") if len(kinds) == 1 else ""
    raise UnknownDatasetError(f"unknown {label}dataset {name!r}; valid datasets: {names(kinds)}")


def load(name: str, kind: str, root: str | Path = "data", **kwargs: Any):
    """Build dataset ``name`` as ``kind`` from ``root`` (``entry(name, kind).load(kind, root, **kwargs)``)."""
    return entry(name, kind).load(kind, root, **kwargs)


def _check_unique() -> None:
    seen = set()
    for e in CATALOGUE:
        for kind in e.loaders:
            for name in (e.name, *e.aliases):
                if (name, kind) in seen:
                    raise RuntimeError(f"catalogue: {name!r} listed twice for kind {kind!r}")
                seen.add((name, kind))


_check_unique()
