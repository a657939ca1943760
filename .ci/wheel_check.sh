#!/usr/bin/env bash
# Packaging check: build the wheel, install it into a fresh virtual environment, and check from outside the
# repository that ctta installs one namespace (ctta, ctta.scenarios, ctta.strategies with every method package)
# and no top-level `strategies` / `scenarios` package.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip wheel -q --no-deps -w "$tmp/dist" .
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q -c constraints.txt "$tmp"/dist/ctta-*.whl
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import importlib.util, pkgutil, sys, zipfile, glob
import ctta, ctta.strategies, ctta.scenarios
import ctta.strategies.mvp, ctta.scenarios.si_blurry
from ctta.registry import SCENARIOS, STRATEGIES
venv = sys.prefix
assert ctta.__file__.startswith(venv), f"ctta imported from {ctta.__file__}, not the wheel in {venv}"
for name in ("strategies", "scenarios"):
    assert importlib.util.find_spec(name) is None, f"the wheel installs a top-level {name!r} package"
names = {n.split("/")[0] for n in zipfile.ZipFile(glob.glob("dist/ctta-*.whl")[0]).namelist()}
top = sorted(n for n in names if not n.endswith(".dist-info"))
assert top == ["ctta"], f"top-level entries in the wheel: {top}"
files = set(zipfile.ZipFile(glob.glob("dist/ctta-*.whl")[0]).namelist())
shipped = {"ctta/pretrained/ctta-tiny-vit.safetensors", "ctta/pretrained/ctta-tiny-clip-digits.safetensors",
           "ctta/pretrained/manifest.json", "ctta/runner/demo_cl.yaml", "ctta/runner/demo_tta.yaml"}
assert shipped <= files, f"package data missing from the wheel: {sorted(shipped - files)}"
from ctta.pretrained import create_tiny_vit
create_tiny_vit(pretrained=True)  # loads and checks the sha256 of the shipped file
print(f"wheel ok: top level {top}; strategies {list(STRATEGIES)}; scenarios {list(SCENARIOS)}")
PY
"$tmp/venv/bin/ctta" list > /dev/null
