"""Every former per-dataset config resolves, through its method+protocol file and a dataset override, to the values
it held before configs were composed (issue 19: "configs composed, not multiplied").

The former leaves are resolved by this tree's loader, from an old checkout's ``configs/`` (``--baseline TREE``) or
a git revision's (``--rev REV``), and each is matched with its new form, ``configs/<method file>
scenario.dataset=<its dataset>`` (the same path when the file was kept); the resolved configs are compared key by
key, except ``log.out_dir`` (now derived from the run unless set). With ``--baseline`` the old checkout's own
loader (a subprocess importing that tree's ``ctta``) resolves them too, and where its values differ, the options
the code added or changed since are listed (they differ between the two loaders on the same old file).

Usage::

    python benchmarks/config_equivalence.py --baseline /path/to/old/checkout
    python benchmarks/config_equivalence.py --rev 9e51bd9
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# former leaf (relative to configs/) -> its method+protocol file; the dataset comes from the former file
MOVED = [
    (r"fewshot/(\w+)/b2n_\w+\.yaml", r"fewshot/\1_b2n.yaml"),
    (r"fewshot/(\w+)/(xd|dg)_imagenet\.yaml", r"fewshot/\1_\2.yaml"),
    (r"(tpt_coop|difftpt|zeroshot|tpt)_\w+\.yaml", r"\1.yaml"),
    (r"(mvp|l2p|dualprompt)_siblurry_\w+\.yaml", r"\1_siblurry.yaml"),
]

_OLD_LOADER = r"""
import importlib.util, json, sys
from pathlib import Path
tree = Path(sys.argv[1]).resolve()
PACKAGES = {"ctta.scenarios": "scenarios", "ctta.strategies": "strategies", "ctta": "ctta"}

class TreeFinder:  # the old tree's three packages, ahead of the installed (editable) ones
    def find_spec(self, name, path=None, target=None):
        if name in PACKAGES:
            d = tree / PACKAGES[name]
            return importlib.util.spec_from_file_location(name, d / "__init__.py", submodule_search_locations=[str(d)])
        return None

sys.meta_path.insert(0, TreeFinder())
import ctta
from ctta.runner.config import load_config, to_dict
assert Path(ctta.__file__).resolve().is_relative_to(tree), ctta.__file__
configs = tree / "configs"
out = {}
for p in sorted(configs.rglob("*.yaml")):
    rel = p.relative_to(configs)
    if "_base" not in rel.parts and rel.parts[0] != "smoke":
        out[str(rel)] = to_dict(load_config(p))
print(json.dumps(out))
"""


def leaves_of_tree(tree: Path) -> dict[str, dict]:
    """Every leaf config (not ``_base``, not ``smoke``) of an old checkout, resolved by that checkout's own loader."""
    res = subprocess.run([sys.executable, "-c", _OLD_LOADER, str(tree)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def leaves_of_dir(configs: Path) -> dict[str, dict]:
    """Every leaf config (not ``_base``, not ``smoke``) of an old ``configs/`` folder, resolved by this loader."""
    from ctta.runner.config import load_config, to_dict

    paths = sorted(p for p in configs.rglob("*.yaml") if "_base" not in p.parts and "smoke" not in p.parts)
    return {str(p.relative_to(configs)): to_dict(load_config(p)) for p in paths}


def leaves_of_rev(rev: str) -> dict[str, dict]:
    """Every leaf config of ``configs/`` at git revision ``rev``, resolved by this tree's loader."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", rev, "configs"], cwd=ROOT, capture_output=True, check=True).stdout
        (Path(tmp) / "c.tar").write_bytes(archive)
        with tarfile.open(Path(tmp) / "c.tar") as tar:
            tar.extractall(tmp, filter="data")
        return leaves_of_dir(Path(tmp) / "configs")


def new_form(rel: str, old: dict) -> tuple[str, list[str]]:
    """The new config file and overrides that stand for the former leaf ``rel`` (resolved as ``old``)."""
    from ctta.runner.compose import DATASETS_KEY
    from ctta.runner.config import read_yaml

    if (ROOT / "configs" / rel).is_file():
        return rel, []
    for pattern, repl in MOVED:
        if re.fullmatch(pattern, rel):
            new = re.sub(pattern, repl, rel)
            takes_dataset = DATASETS_KEY in read_yaml(ROOT / "configs" / new)
            return new, [f"scenario.dataset={old['scenario']['dataset']}"] if takes_dataset else []
    raise SystemExit(f"{rel}: no new form (neither kept nor matched by MOVED)")


def compare(before: dict[str, dict]) -> list[str]:
    """Resolve the new form of every former leaf and return the ones whose values differ (except log.out_dir)."""
    from ctta.runner.config import load_config, to_dict

    differing = []
    for rel, old in before.items():
        new_rel, overrides = new_form(rel, old)
        new = to_dict(load_config(ROOT / "configs" / new_rel, overrides))
        old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))  # tuples -> lists on both sides
        old["log"].pop("out_dir"), new["log"].pop("out_dir")
        if old != new:
            differing.append(f"{rel} != {new_rel} {' '.join(overrides)}")
    return differing


def schema_changes(old_loader: dict[str, dict], this_loader: dict[str, dict]) -> list[str]:
    """``section.key: old -> new`` where the old code's loader and this tree's resolve the same old file differently
    (options added or changed by the code since, not by the config files)."""
    changes = set()
    for rel, a in old_loader.items():
        b = json.loads(json.dumps(this_loader[rel]))
        for sec in set(a) | set(b):
            x, y = a.get(sec, {}), b.get(sec, {})
            if isinstance(x, dict) and isinstance(y, dict):
                changes |= {f"{sec}.{k}: {x.get(k, '(absent)')} -> {y.get(k, '(absent)')}" for k in set(x) | set(y)
                            if x.get(k, "(absent)") != y.get(k, "(absent)")}  # fmt: skip
            elif x != y:
                changes.add(f"{sec}: {x} -> {y}")
    return sorted(c for c in changes if not c.startswith("log.out_dir"))


def _report(before: dict[str, dict], what: str) -> list[str]:
    differing = compare(before)
    new_files = sorted({new_form(rel, old)[0] for rel, old in before.items()})
    print(f"{len(before) - len(differing)} of {len(before)} former leaf configs ({what}) resolve identically "
          f"(log.out_dir aside) through {len(new_files)} files")  # fmt: skip
    return differing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--baseline", type=Path, help="an old checkout: its own loader resolves its configs")
    src.add_argument("--rev", help="a git revision: this tree's loader resolves its configs/")
    args = ap.parse_args(argv)
    if args.rev:
        differing = _report(leaves_of_rev(args.rev), "this loader")
    else:  # the composition is judged with one loader; the old loader's view also shows what the code changed since
        this_loader = leaves_of_dir(args.baseline / "configs")
        differing = _report(this_loader, "this loader")
        old_loader = leaves_of_tree(args.baseline)
        if _report(old_loader, "the old checkout's loader"):
            print("  they differ only where the code changed the resolved options since the old checkout:")
            print("\n".join(f"    {c}" for c in schema_changes(old_loader, this_loader)))
    for line in differing:
        print("DIFFERS:", line)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
