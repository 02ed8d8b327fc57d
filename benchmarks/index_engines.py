"""`e5omni index` engines side by side in one run: Ray Data on this machine against the local engine.

    python benchmarks/index_engines.py [--media real|small] [--items N] [--shard-size S] [--batch-size B] [--cpus 2]

One tiny random Qwen2.5-Omni (`e5omni.tiny`, seed 0) is saved as a model folder; both engines load it from there
(the ray actors must). The corpus is a folder written once, in equal shares of text (.txt), images, audio and
video. `--media real` (the default): the files of benchmarks/encode_pipeline.py, at the sizes phones and cameras
write (12 MP JPEG photos, 30 s 44.1 kHz stereo WAVs, 10 s 1080p MP4 clips with an AAC track), so decoding dominates
as it does next to a GPU's forward (the tiny model's forward is cheap). `--media small`: 64x64 PNGs, 1 s WAVs,
4-frame 48x48 MP4s; each item then costs a few milliseconds, and the figure is Ray's fixed cost per batch and per
job (actor start, scheduling), not its throughput on work worth distributing. Each repeat runs the local engine (`build_corpus`, this
process, `--threads` torch threads), the local engine with `num_workers = cpus` decoding processes, and then the
ray engine (`engine="ray"`, one embedding actor of one CPU, decode
tasks on the others) into fresh folders; the figures are the medians. The Ray cluster (`ray.init(num_cpus=--cpus)`)
is started once before the timings, as a cluster a user runs on already exists; its start is reported apart.
A ray run's time includes its actor loading the model and the pipeline's start, so `ray_vs_local` is the whole job's
throughput ratio (goal >= 0.85); `ray_vs_local_steady` is the ratio of the rates between the first and the last
shard written (each engine's start-up left out: what adding items costs). `max_abs_diff` compares every vector of the two engines (goal < 1e-5) and
`same_ids_and_errors` their ids and errors.jsonl. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_corpus(folder: Path, n: int) -> None:
    import soundfile as sf
    from PIL import Image

    from tests.test_inputs import write_mp4

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    t = np.arange(16000) / 16000
    for i in range(n):
        kind = i % 4
        if kind == 0:
            words = " ".join(rng.choice(["red", "blue", "circle", "square", "moving", "left", "a", "the"], 12))
            (folder / f"{i:05d}.txt").write_text(f"document {i}: {words}")
        elif kind == 1:
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        elif kind == 2:
            tone = 0.3 * np.sin(2 * np.pi * (220 + 10 * (i % 40)) * t)
            sf.write(folder / f"{i:05d}.wav", tone.astype(np.float32), 16000)
        else:
            write_mp4(folder / f"{i:05d}.mp4", rng.integers(0, 256, (4, 48, 48, 3), dtype=np.uint8))


def write_real_corpus(folder: Path, n: int, distinct: int = 8) -> None:
    """`n` items: `distinct` files of each kind written (slow: 1080p video), then copied under new names (the
    decoding cost is the same for a copy; so is its vector, which does not matter here)."""
    import shutil

    from benchmarks.encode_pipeline import write_corpus as write_media

    originals = folder.with_name(folder.name + "-originals")
    originals.mkdir(parents=True)
    items = write_media(originals, min(distinct, max(1, n // 4)))
    folder.mkdir(parents=True)
    for i in range(n):
        item = items[i % len(items)]
        if isinstance(item, str):
            (folder / f"{i:05d}.txt").write_text(f"{item} (copy {i})")
        else:
            path = Path(next(iter(item.values())))
            shutil.copyfile(path, folder / f"{i:05d}{path.suffix}")


def steady_rate(out: Path) -> float:
    """Items per second between the first and the last shard file written (the job's start-up left out)."""
    import json as _json

    manifest = _json.loads((out / "manifest.json").read_text())
    done = sorted(((out / "shards" / s["name"]).stat().st_mtime, s["rows"] + s["errors"]) for s in manifest["shards"])
    if len(done) < 2 or done[-1][0] <= done[0][0]:
        return float("nan")
    return sum(rows for _, rows in done[1:]) / (done[-1][0] - done[0][0])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", choices=("real", "small"), default="real")
    parser.add_argument("--items", type=int, default=None, help="default: 256 real or 768 small items")
    parser.add_argument("--shard-size", type=int, default=None, help="default: 16 real, 64 small")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 real, 16 small")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the local engine")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    real = args.media == "real"
    args.items = args.items or (256 if real else 768)
    args.shard_size = args.shard_size or (16 if real else 64)
    args.batch_size = args.batch_size or (4 if real else 16)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    import ray

    from e5omni.cli.common import load_inference_model
    from e5omni.index import build_corpus
    from e5omni.index.search import read_shards
    from e5omni.release import save_hub_folder
    from e5omni.tiny import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="e5omni-engines-"))
    tiny, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model_dir = str(save_hub_folder(tiny, processor, work / "model"))
    model = load_inference_model(model_dir)
    corpus = work / "corpus"
    start = time.perf_counter()
    (write_real_corpus if real else write_corpus)(corpus, args.items)
    print(f"corpus: {args.items} {args.media} items written in {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - start
    kwargs = {"shard_size": args.shard_size, "batch_size": args.batch_size, "model_path": model_dir}
    kwargs["show_progress_bar"] = False
    # local: this process; local-workers: the local engine decoding in `cpus` worker processes (num_workers; the
    # forward of the tiny model is cheap, so decoding is the work to spread);
    # ray: Ray Data on the same cores
    arms = {
        "local": {"engine": "local"},
        "local-workers": {"engine": "local", "num_workers": args.cpus},
        "ray": {"engine": "ray"},
    }
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    steady: dict[str, list[float]] = {arm: [] for arm in arms}
    try:
        for repeat in range(args.repeats):
            for engine, options in arms.items():
                out = work / f"{engine}-{repeat}"
                start = time.perf_counter()
                summary = build_corpus(model, corpus, out, **options, **kwargs)
                times[engine].append(time.perf_counter() - start)
                steady[engine].append(steady_rate(out))
                print(
                    f"repeat {repeat} {engine}: {times[engine][-1]:.1f} s, {summary.embedded} embedded, "
                    f"{summary.failed} failed",
                    flush=True,
                )
    finally:
        ray.shutdown()
    local_rows, local_vectors = read_shards(work / "local-0")
    ray_rows, ray_vectors = read_shards(work / "ray-0")
    same = (
        local_rows == ray_rows
        and (work / "local-0" / "errors.jsonl").read_text() == (work / "ray-0" / "errors.jsonl").read_text()
    )
    local_s, ray_s = statistics.median(times["local"]), statistics.median(times["ray"])
    workers_s = statistics.median(times["local-workers"])
    _, worker_vectors = read_shards(work / "local-workers-0")
    figures = {
        "media": args.media,
        "items": args.items,
        "batch_size": args.batch_size,
        "cpus": args.cpus,
        "local_items_per_s": round(args.items / local_s, 2),
        "ray_items_per_s": round(args.items / ray_s, 2),
        "ray_vs_local": round(local_s / ray_s, 3),
        "local_workers_items_per_s": round(args.items / workers_s, 2),
        "local_workers_vs_local": round(local_s / workers_s, 3),
        "ray_vs_local_workers": round(workers_s / ray_s, 3),
        "local_steady_items_per_s": round(statistics.median(steady["local"]), 2),
        "ray_steady_items_per_s": round(statistics.median(steady["ray"]), 2),
        "ray_vs_local_steady": round(statistics.median(steady["ray"]) / statistics.median(steady["local"]), 3),
        "ray_cluster_start_s": round(ray_start, 1),
        "max_abs_diff": float(np.abs(local_vectors - ray_vectors).max()) if len(local_vectors) else 0.0,
        "workers_max_abs_diff": float(np.abs(local_vectors - worker_vectors).max()) if len(local_vectors) else 0.0,
        "same_ids_and_errors": bool(same),
    }
    print(
        f"local {figures['local_items_per_s']} items/s, ray {figures['ray_items_per_s']} items/s: "
        f"ray / local = {figures['ray_vs_local']} (goal >= 0.85); after the first shard (start-up left out): "
        f"ray / local = {figures['ray_vs_local_steady']}; max |diff| {figures['max_abs_diff']:.2e}"
    )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
