#!/usr/bin/env bash
# The GPU check in one run (from a copy of the repository, no network needed), in under 8 minutes:
#   1. installs what the machine lacks from the carried wheels folder (.gpu_wheels/, filled by
#      benchmarks/gpu/prepare_wheels.sh on a machine with the package index) with pip --no-index, and makes ctta
#      importable from this copy;
#   2. pytest -m gpu (tests/test_gpu.py: skipped without CUDA);
#   3. the GPU benchmarks (benchmarks/gpu/tpt_bench.py, benchmarks/gpu/mvp_bench.py; reduced sizes without CUDA);
#   4. writes gpu_results.json + gpu_results.md (the table, also printed last), pytest.log, bench.log and run.log
#      into $OUT, or benchmarks/gpu/out/ when OUT is unset.
# Usage: bash benchmarks/gpu/run.sh
# Environment: OUT, PYTHON (python3), WHEEL_DIR (.gpu_wheels), PYTEST_BUDGET / TPT_BUDGET / MVP_BUDGET (seconds:
# 240 / 120 / 90 with CUDA, 240 / 300 / 300 without), TEST_TIMEOUT (150 s per test), PYTEST_WORKERS (6), BENCH_THREADS (CPU threads of the benchmarks without CUDA: 2), PYTEST_ARGS (extra pytest args).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd -P)
OUT=${OUT:-$ROOT/benchmarks/gpu/out}
PY=${PYTHON:-python3}
WHEELS=${WHEEL_DIR:-$ROOT/.gpu_wheels}
SITE=${CTTA_SITE:-/tmp/ctta_gpu_site}
WORK=$(mktemp -d /tmp/ctta_gpu_check.XXXXXX)
mkdir -p "$OUT"
rm -f "$OUT"/gpu_results.json "$OUT"/gpu_results.md "$OUT"/pytest.log "$OUT"/bench.log "$OUT"/run.log
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
log() { echo "[run.sh +$(($(date +%s) - START))s] $*" | tee -a "$OUT/run.log"; }

# ---------------------------------------------------------------------------------------------- 1. install
if [ -d "$WHEELS" ]; then
    missing=$("$PY" - "$WHEELS" <<'EOF'
import importlib.metadata as md, pathlib, sys
for whl in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    try:
        md.version(whl.name.split("-")[0])
    except md.PackageNotFoundError:
        print(whl)
EOF
)
    if [ -n "$missing" ]; then
        log "installing $(echo "$missing" | wc -l) carried wheels into $SITE"
        # shellcheck disable=SC2086
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $missing \
            >>"$OUT/run.log" 2>&1 || log "pip install from $WHEELS failed (see run.log)"
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        log "every carried wheel is installed already"
    fi
else
    log "no wheels folder $WHEELS: using the installed packages"
fi
stack_ok() { "$PY" -c "import avalanche.training, open_clip, diffusers, timm" >/dev/null 2>&1; }
if [ -d "$WHEELS" ] && ! stack_ok; then  # an image package too old or new for the carried ones (e.g. protobuf)
    log "the installed packages do not import together: every carried wheel goes ahead of the image's"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl >>"$OUT/run.log" 2>&1 || log "pip install from $WHEELS failed (see run.log)"
    case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    stack_ok || log "still not importable: $("$PY" -c 'import avalanche.training, open_clip, diffusers' 2>&1 | tail -n 1)"
fi
ctta_here() {  # ctta imports, from this copy
    "$PY" -c "import ctta, ctta.strategies.tpt, os, sys; sys.exit(not os.path.realpath(ctta.__file__).startswith('$ROOT/'))" \
        2>/dev/null
}
link_ctta() {  # no build possible: ctta from this copy through links (scenarios/, strategies/ mapped in)
    mkdir -p "$SITE/ctta"
    for f in "$ROOT"/ctta/*; do ln -sfn "$f" "$SITE/ctta/"; done
    ln -sfn "$ROOT/scenarios" "$SITE/ctta/scenarios"
    ln -sfn "$ROOT/strategies" "$SITE/ctta/strategies"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}
if ctta_here; then
    log "ctta imports from this copy"
else
    if [ -z "${CTTA_LINK_ONLY:-}" ]; then
        log "installing ctta from this copy (editable, offline)"
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/run.log" 2>&1 || true
    fi
    if [ -n "${CTTA_LINK_ONLY:-}" ] || ! ctta_here; then
        log "linking ctta from this copy into $SITE"
        link_ctta
    fi
    ctta_here || log "ctta is still not importable from $ROOT: the steps below will fail"
fi

"$PY" - "$WORK/env.json" <<'EOF' 2>>"$OUT/run.log"
import importlib.metadata as md, json, platform, subprocess, sys
import torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    env |= {"name": torch.cuda.get_device_name(0), "device": "cuda:0", "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported()}
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
else:
    env |= {"name": platform.processor() or platform.machine(), "device": "cpu"}
for name in ("ctta", "avalanche-lib", "open_clip_torch", "timm", "diffusers", "transformers", "numpy"):
    try:
        env[name] = md.version(name)
    except md.PackageNotFoundError:
        env[name] = None
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(env)
EOF
cat "$WORK/env.json" >>"$OUT/run.log" 2>/dev/null
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$CUDA" = 1 ]; then
    BENCH_ARGS=()
    TPT_BUDGET=${TPT_BUDGET:-120} MVP_BUDGET=${MVP_BUDGET:-90}
else  # the CPU fallback is not held to the 8 minutes
    TPT_BUDGET=${TPT_BUDGET:-300} MVP_BUDGET=${MVP_BUDGET:-300}
    export OMP_NUM_THREADS=${BENCH_THREADS:-2}
    BENCH_ARGS=(--threads "${BENCH_THREADS:-2}")
    log "no CUDA: gpu tests skip, benchmarks at reduced size on ${BENCH_THREADS:-2} CPU threads"
fi

# ---------------------------------------------------------------------------------------------- 2. tests
EXTRA=()  # a per-test limit and parallel workers (one GPU holds several tiny runs) where the plugins are there
"$PY" -c "import pytest_timeout" 2>/dev/null && EXTRA+=(--timeout "${TEST_TIMEOUT:-150}")
[ "$CUDA" = 1 ] && "$PY" -c "import xdist" 2>/dev/null && EXTRA+=(-n "${PYTEST_WORKERS:-6}")
log "pytest -m gpu (budget ${PYTEST_BUDGET:-240}s)"
# shellcheck disable=SC2086
timeout -k 10 "${PYTEST_BUDGET:-240}" "$PY" -m pytest -m gpu -v -rfE -p no:cacheprovider --continue-on-collection-errors "${EXTRA[@]}" \
    ${PYTEST_ARGS:-} >"$OUT/pytest.log" 2>&1
echo $? >"$WORK/pytest.rc"
log "pytest exit code $(cat "$WORK/pytest.rc"): $(tail -n 1 "$OUT/pytest.log")"
cp "$OUT/pytest.log" "$WORK/pytest.log"

# ---------------------------------------------------------------------------------------------- 3. benchmarks
bench() {  # name budget script
    log "$1 benchmark (budget $2s)"
    timeout -k 10 "$2" "$PY" "$3" --json "$WORK/$1.json" "${BENCH_ARGS[@]}" >"$WORK/$1.log" 2>&1
    echo $? >"$WORK/$1.rc"
    { echo "===== $1 (exit $(cat "$WORK/$1.rc"))"; cat "$WORK/$1.log"; } >>"$OUT/bench.log"
    log "$1 exit code $(cat "$WORK/$1.rc"): $(tail -n 1 "$WORK/$1.log")"
}
bench tpt "$TPT_BUDGET" benchmarks/gpu/tpt_bench.py
bench mvp "$MVP_BUDGET" benchmarks/gpu/mvp_bench.py

# ---------------------------------------------------------------------------------------------- 4. report
"$PY" benchmarks/gpu/report.py "$WORK" >>"$OUT/run.log" 2>&1 || log "report failed (see run.log)"
cp "$WORK"/gpu_results.json "$WORK"/gpu_results.md "$OUT"/ 2>/dev/null
log "done in $(($(date +%s) - START))s; results in $OUT"
cat "$OUT/gpu_results.md" 2>/dev/null
rm -rf "$WORK"
