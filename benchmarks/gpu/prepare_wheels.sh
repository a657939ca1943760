#!/usr/bin/env bash
# Fill .gpu_wheels/ (git-ignored) with the wheels the GPU machine lacks (benchmarks/gpu/wheels.txt), for that
# machine's CPython 3.12 on x86-64 Linux, at the versions installed here. Run on a machine with the package index,
# from the repository root, in the environment where ctta is installed: bash benchmarks/gpu/prepare_wheels.sh
# Then carry .gpu_wheels with the repository copy; benchmarks/gpu/run.sh installs from it with pip --no-index.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${WHEEL_DIR:-.gpu_wheels}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_24_x86_64)
grep -v '^\s*#' benchmarks/gpu/wheels.txt | grep -v '^\s*$' | while read -r name; do
    version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    if ls "$DEST" | grep -qi "^$(echo "$name" | tr '-' '_' )-$version-"; then continue; fi
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST" "$name==$version"; then
        echo "no binary wheel for $name==$version: building one from the source distribution (pure Python)"
        "$PY" -m pip wheel -q --no-deps -w "$DEST" "$name==$version"
    fi
done
du -sh "$DEST"
ls "$DEST"
