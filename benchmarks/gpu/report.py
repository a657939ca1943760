"""Combine the GPU check's parts (pytest log, tpt.json, mvp.json) into one JSON and a short Markdown table.

Usage: ``python benchmarks/gpu/report.py OUT_DIR`` (run by ``benchmarks/gpu/run.sh``); writes
``OUT_DIR/gpu_results.json`` and ``OUT_DIR/gpu_results.md`` and prints the table.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def pytest_summary(log: Path, rc_file: Path) -> dict:
    if not log.exists():
        return {"ran": False}
    text = log.read_text(errors="replace")
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    failed = re.findall(r"^(?:FAILED|ERROR) (tests/\S+)", text, re.M)
    summary = r"^=+ .*\d+ (passed|failed|skipped|errors?|deselected).* in [\d.]+s"
    last = [ln for ln in text.splitlines() if re.search(summary, ln)]
    if last:
        for n, status in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last[-1]):
            counts["error" if status.startswith("error") else status] = int(n)
    else:  # killed before its summary: count the tests reported so far (-v lines, with or without xdist)
        seen = {}
        for a, b, c, d in re.findall(
            r"(?:\b(PASSED|FAILED|SKIPPED|ERROR) (tests/\S+))|(?:(tests/\S+) (PASSED|FAILED|SKIPPED|ERROR))", text
        ):
            seen[b or c] = (a or d).lower()
        for status in seen.values():
            counts[status] += 1
        counts["killed_before_summary"] = True
        failed += [t for t, status in seen.items() if status in ("failed", "error")]
    rc = rc_file.read_text().strip() if rc_file.exists() else "?"
    return {"ran": True, "exit_code": rc, **counts, "failed_tests": sorted(set(failed))}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def table(res: dict) -> str:
    dev = res.get("device", {})
    lines = [f"GPU check on {dev.get('name', '?')} ({dev.get('device', '?')}, torch {dev.get('torch', '?')})", ""]
    py = res.get("pytest", {})
    if py.get("ran"):
        lines.append(
            f"pytest -m gpu: {py['passed']} passed, {py['failed']} failed, {py['error']} errors, "
            f"{py['skipped']} skipped (exit {py['exit_code']})"
            + (f"; failed: {py['failed_tests']}" if py["failed_tests"] else "")
        )
        lines.append("")
    lines += [
        "| benchmark | path | samples/s | vs reference | matrix TFLOP/s | of peak | of measured matmul | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tpt = res.get("tpt")
    if tpt and "paths" in tpt:
        p, a = tpt["params"], tpt["agreement"]
        head = f"TPT {p['model']}, {p['classes']} cl., {p['views']} views, {tpt['matrix_dtype']}"
        for name in ("straightforward", "fast"):
            r = tpt["paths"][name]
            ratio = "1.00x" if name == "straightforward" else f"{tpt['speedup']:.2f}x"
            note = f"50k samples: {r['projected_min_50k']:.1f} min"
            if name == "fast":
                note += (
                    f"; batch {p['batch']}; argmax {a['argmax_identical']}/{a['samples']}, selected views "
                    f"{a['selected_identical']}/{a['samples']} identical, max dlogit {a['max_abs_dlogit']:.1e}"
                )
            lines.append(
                f"| {head} | {name} | {r['samples_per_s']:.3g} | {ratio} | {r['achieved_tflops']:.3g} | "
                f"{_pct(r['frac_of_peak'])} | {_pct(r['frac_of_measured_matmul'])} | {note} |"
            )
    elif tpt:
        lines.append(f"| TPT | - | - | - | - | - | - | {tpt.get('error', 'no result')} |")
    mvp = res.get("mvp")
    if mvp and "precisions" in mvp:
        p = mvp["params"]
        for row in mvp["precisions"]:
            head = f"MVP {p['model']}, batch {p['batch']}, {row['precision']} ({row['matrix_dtype']} matmul)"
            for name in ("reference", "ours"):
                r = row[name]
                ratio = "1.00x" if name == "reference" else f"{row['speedup']:.2f}x"
                note = f"{r['updates_per_s']:.3g} updates/s"
                if name == "ours":
                    note += f"; max rel loss diff {row['max_rel_loss_diff']:.1e}"
                lines.append(
                    f"| {head} | {name} | {r['samples_per_s']:.3g} | {ratio} | {r['achieved_tflops']:.3g} | "
                    f"{_pct(r['frac_of_peak'])} | {_pct(r['frac_of_measured_matmul'])} | {note} |"
                )
    elif mvp:
        lines.append(f"| MVP | - | - | - | - | - | - | {mvp.get('error', 'no result')} |")
    peaks = sorted({(b.get("peak_source"), b.get("measured_matmul_tflops")) for b in _parts(res)}, key=str)
    lines.append("")
    for src, measured in peaks:
        lines.append(f"ceiling: {src}; measured matmul {measured:.3g} TFLOP/s" if measured else f"ceiling: {src}")
    clocks = sorted({res[n]["clock"] for n in ("tpt", "mvp") if isinstance(res.get(n), dict) and "clock" in res[n]})
    if clocks:
        lines.append(f"times: {', '.join(clocks)}")
    lines.append("FLOPs: matrix products, convolutions and attention counted by torch FlopCounterMode.")
    return "\n".join(lines) + "\n"


def _parts(res: dict):
    if res.get("tpt", {}).get("paths"):
        yield res["tpt"]
    yield from res.get("mvp", {}).get("precisions", [])


def main(out_dir: str) -> None:
    out = Path(out_dir)
    res: dict = {}
    res["pytest"] = pytest_summary(out / "pytest.log", out / "pytest.rc")
    for name in ("tpt", "mvp"):
        path = out / f"{name}.json"
        rc = out / f"{name}.rc"
        if path.exists():
            res[name] = json.loads(path.read_text())
        else:
            res[name] = {"error": f"no result (exit code {rc.read_text().strip() if rc.exists() else '?'})"}
    env = out / "env.json"
    if env.exists():
        res["environment"] = json.loads(env.read_text())
    res["device"] = next((res[n]["device"] for n in ("tpt", "mvp") if "device" in res[n]), res.get("environment", {}))
    text = table(res)
    (out / "gpu_results.json").write_text(json.dumps(res, indent=2))
    (out / "gpu_results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/gpu/out")
