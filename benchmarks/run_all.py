"""Run every benchmark script in benchmarks/ and write benchmarks/RESULTS.md (what `make bench` does).

    python benchmarks/run_all.py [--only NAME ...] [--skip NAME ...] [--quick] [--output benchmarks/RESULTS.md]

Each `benchmarks/*.py` except this file runs in its own process (`OMP_NUM_THREADS=1` unless already set), one after
the other so that timings do not compete; its output streams to the console and its last output line, one JSON
object, is collected. RESULTS.md gets the machine (CPU model, cores, RAM), the package versions, the date and the
commit, then each benchmark's figures with their targets, and the ablation tables (from
benchmarks/ablation_results.json). Benchmarks not run this time (``--only`` / ``--skip``) keep their previous figures,
read back from the JSON block at the end of the previous RESULTS.md and marked with their own date. ``--quick``
passes ``--quick`` to the scripts that have it (the ablation: 1 seed, 8 steps) and writes to a temporary file unless
``--output`` is given, so a smoke run never replaces real figures. ``--rerender`` rewrites RESULTS.md from its own
JSON block (after a change to the layout or the targets) without running anything. Exit status 1 if any benchmark
failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUTPUT = HERE / "RESULTS.md"
ABLATION_JSON = HERE / "ablation_results.json"

# Quick timing benchmarks first, the ~30-minute ablation last; any new script runs after these, alphabetically.
ORDER = ["loss_overhead", "encode_throughput", "gradcache_memory", "ablation"]
QUICK_ARGS = {"ablation": ["--quick"]}
PACKAGES = [
    "torch",
    "torchvision",
    "transformers",
    "sentence-transformers",
    "peft",
    "trl",
    "datasets",
    "tokenizers",
    "numpy",
    "pillow",
    "av",
    "soundfile",
]
# (figure, comparison, threshold) as stated in issue 7 and docs/losses.md.
TARGETS = {
    "loss_overhead": [("full_vs_infonce", "<=", 2.0), ("whitening_growth_2d", "<=", 2.3)],
    "encode_throughput": [
        ("batched_vs_reference", ">=", 4.0),
        ("max_abs_diff", "<", 1e-5),
        ("vs_sentence_transformers", ">=", 0.95),
        ("wrapper_overhead", "<=", 1.10),
    ],
    "gradcache_memory": [("rss_64_vs_8", "<=", 1.3), ("rss_64_vs_8_glibc_default", "<=", 1.3)],
    # issue 13 (docs/benchmarks.md)
    "encode_pipeline": [("speedup", ">=", 1.6)],
    "index_engines": [("ray_vs_local", ">=", 0.85), ("max_abs_diff", "<", 1e-5)],
    "search_ann": [("ivf_recall@10", ">=", 0.95), ("ivf_speedup", ">=", 10.0)],
    # issue 14: a search on a 100k-item index under 1 s once the model is loaded
    "app_search_latency": [],
}
JSON_MARK = "<!-- results-json"


def discover() -> list[Path]:
    scripts = {p.stem: p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")}
    return [scripts[n] for n in ORDER if n in scripts] + [scripts[n] for n in sorted(set(scripts) - set(ORDER))]


# ------------------------------------------------------------------------------------------------ environment
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def machine() -> dict:
    ram = _ram_gib()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "ram_gib": round(ram, 1) if ram else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        if sha.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------------------------- runs
def run(script: Path, extra: list[str], timeout: float) -> dict:
    """Run one benchmark, streaming its output; its last non-empty line must be one JSON object."""
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [sys.executable, str(script), *extra]
    print(f"\n== {script.relative_to(REPO)} {' '.join(extra)}".rstrip(), flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    watchdog = threading.Timer(timeout, proc.kill)  # kills a benchmark that runs (or hangs) past the timeout
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        raise
    finally:
        watchdog.cancel()
    seconds = time.perf_counter() - start
    result = {
        "script": str(script.relative_to(REPO)),
        "args": extra,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds, 1),
        "returncode": proc.returncode,
    }
    last = next((line for line in reversed(lines) if line.strip()), "")
    try:
        figures = json.loads(last)
        if not isinstance(figures, dict):
            raise ValueError("not an object")
        result["figures"] = figures
    except ValueError:
        result["figures"] = None
    if proc.returncode != 0 or result["figures"] is None:
        why = f"exit status {proc.returncode}" if proc.returncode != 0 else "last line is not a JSON object"
        if seconds > timeout:
            why = f"killed after the {timeout:.0f} s timeout"
        result["error"] = why
        result["tail"] = lines[-30:]
    return result


# ---------------------------------------------------------------------------------------------------- writing
def _fmt(value) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _verdict(value, op: str, threshold: float) -> str:
    ok = {"<=": value <= threshold, "<": value < threshold, ">=": value >= threshold}[op]
    return "met" if ok else "**missed**"


def render(results: dict[str, dict], meta: dict) -> str:
    m = meta["machine"]
    lines = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run_all.py` (`make bench`); do not edit by hand. What each benchmark measures and how "
        "to read it: [docs/benchmarks.md](../docs/benchmarks.md).",
        "",
        f"- date: {meta['date']}; commit: {meta['commit']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['ram_gib']} GiB RAM; {m['os']}",
        f"- Python {m['python']}; OMP_NUM_THREADS={m['omp_num_threads']}; CPU only, fp32",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
    ]
    for name, result in results.items():
        args = " ".join(result.get("args") or [])
        lines += [
            f"## {name}",
            "",
            f"`python {result['script']}{' ' + args if args else ''}`: {result['seconds']:.0f} s, "
            f"measured {result['date']}" + (" (kept from an earlier run)" if result.get("kept") else ""),
            "",
        ]
        if result.get("error"):
            lines += [f"**Failed**: {result['error']}.", "", "```", *result.get("tail", []), "```", ""]
            continue
        figures = result["figures"]
        targets = {key: (op, threshold) for key, op, threshold in TARGETS.get(name, [])}
        lines += ["| figure | value | target |", "|---|---|---|"]
        for key, value in figures.items():
            target = ""
            if key in targets and isinstance(value, int | float):
                op, threshold = targets[key]
                target = f"{op} {threshold:g}: {_verdict(value, op, threshold)}"
            lines.append(f"| `{key}` | {_fmt(value)} | {target} |")
        lines.append("")
        if name == "ablation" and result.get("ablation"):
            ablation = result["ablation"]
            lines += ["Settings: " + ablation["description"], "", ablation["table_markdown"], ""]
    payload = json.dumps({"meta": meta, "results": results}, indent=None)
    lines += [f"{JSON_MARK} {payload} -->", ""]
    return "\n".join(lines)


def previous_results(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    match = re.search(re.escape(JSON_MARK) + r" (.*) -->", path.read_text())
    if not match:
        return {}
    try:
        return json.loads(match.group(1)).get("results", {})
    except ValueError:
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="benchmark names (file stems) to run")
    parser.add_argument("--skip", nargs="+", default=[], help="benchmark names to leave out")
    parser.add_argument("--quick", action="store_true", help="smoke run (see above)")
    parser.add_argument("--output", type=Path, default=None, help=f"default: {DEFAULT_OUTPUT.relative_to(REPO)}")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    parser.add_argument(
        "--rerender", action="store_true", help="rewrite the output from its own JSON block, running nothing"
    )
    args = parser.parse_args(argv)
    if args.rerender:
        path = args.output or DEFAULT_OUTPUT
        match = re.search(re.escape(JSON_MARK) + r" (.*) -->", path.read_text()) if path.is_file() else None
        if not match:
            parser.error(f"{path} has no results block to re-render")
        data = json.loads(match.group(1))
        path.write_text(render(data["results"], data["meta"]))
        print(f"[bench] re-rendered {path}")
        return 0

    scripts = discover()
    names = [s.stem for s in scripts]
    for name in [*(args.only or []), *args.skip]:
        if name not in names:
            parser.error(f"unknown benchmark {name!r}; have {names}")
    selected = [s for s in scripts if (args.only is None or s.stem in args.only) and s.stem not in args.skip]
    output = args.output
    if output is None:
        output = Path(tempfile.gettempdir()) / "RESULTS.quick.md" if args.quick else DEFAULT_OUTPUT

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(),
        "versions": versions(),
    }
    m = meta["machine"]
    print(f"[bench] {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; running {[s.stem for s in selected]}")
    previous = previous_results(output)
    results: dict[str, dict] = {}
    for script in selected:
        extra = QUICK_ARGS.get(script.stem, []) if args.quick else []
        result = run(script, extra, args.timeout)
        if script.stem == "ablation" and not extra and not result.get("error") and ABLATION_JSON.is_file():
            data = json.loads(ABLATION_JSON.read_text())
            result["ablation"] = {
                "description": data["settings"]["description"],
                "table_markdown": data["table_markdown"],
            }
        results[script.stem] = result
    ordered: dict[str, dict] = {}
    for name in names:  # keep earlier figures of benchmarks not run this time
        if name in results:
            ordered[name] = results[name]
        elif name in previous and not previous[name].get("error"):
            ordered[name] = {**previous[name], "kept": True}
    output.write_text(render(ordered, meta))
    failed = [name for name, r in results.items() if r.get("error")]
    print(f"\n[bench] wrote {output}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
