"""vLLM (CPU build, offline `LLM.embed`) vs e5-omni's own `encode` on the same tiny model and items, in one run.

    python benchmarks/serve_vllm.py [--items 96] [--venv .vllm-venv] [--output benchmarks/serve_vllm.json]

Builds the tiny Qwen2.5-Omni model with head_dim 32 (vLLM's CPU attention has no 16), exports it with
`export_vllm`, embeds the same items (a third text, a third 56 x 56 images, a third 1 s audio clips; documents and
queries alternating) with `encode` (batch 32) and with vLLM in its own virtualenv (scripts/vllm_venv.sh), both in
float32, and reports items/s of each (vLLM's start-up, ~1-3 min, is reported apart, not in its rate) and the largest
difference between the vectors. Media are decoded once by our processor and handed to both, so the rate is of the
model + processor, not of file decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _items(n: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    words = "red blue green circle square triangle moving left right top bottom tone chirp sweep".split()
    items = []
    for i in range(n):
        role = "query" if i % 2 else "document"
        kind = i % 3
        if kind == 0:
            items.append((role, " ".join(rng.choice(words, size=8))))
        elif kind == 1:
            items.append((role, {"image": Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))}))
        else:
            t = np.linspace(0, 1, 16000, dtype=np.float32)
            items.append((role, {"audio": (0.1 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)).astype(np.float32)}))
    return items


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--venv", default=os.environ.get("E5OMNI_VLLM_VENV", str(ROOT / ".vllm-venv")))
    parser.add_argument("--output", default=None, help="also write the result JSON here")
    args = parser.parse_args(argv)
    python = Path(args.venv) / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no vLLM virtualenv at {args.venv}: run `bash scripts/vllm_venv.sh` first")

    import torch

    from e5omni.export import export_vllm
    from e5omni.tiny import build_tiny_model

    model, processor = build_tiny_model("qwen2.5-omni", seed=0, head_dim=32)
    model.set_processor(processor)
    items = _items(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = export_vllm(model, processor, tmp / "export")
        decoded = [processor.decode(item, i) for i, (_, item) in enumerate(items)]
        job = []
        for i, ((role, _), d) in enumerate(zip(items, decoded, strict=True)):
            entry: dict = {"text": d.text}
            if role == "query":
                entry["prompt"] = model.config.query_prompt
            if d.image is not None:
                d.image.save(tmp / f"image{i}.png")
                entry["image"] = str(tmp / f"image{i}.png")
            if d.audio is not None:
                np.save(tmp / f"audio{i}.npy", d.audio)
                entry["audio"] = str(tmp / f"audio{i}.npy")
            job.append(entry)
        (tmp / "job.json").write_text(json.dumps({"model": str(out), "dtype": "float32", "items": job}))

        # ours: the same decoded media (as items), documents and queries each in batches of 32
        torch.set_num_threads(os.cpu_count() or 1)
        ours = np.zeros((len(items), model.config.hidden_size), dtype=np.float32)
        start = time.perf_counter()
        for role in ("document", "query"):
            rows = [i for i, (r, _) in enumerate(items) if r == role]
            media = [_as_item(decoded[i]) for i in rows]
            ours[rows] = model.encode(media, role=role, batch_size=32, convert_to_numpy=True)
        ours_seconds = time.perf_counter() - start

        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        start = time.perf_counter()
        worker = ROOT / "e5omni" / "export" / "vllm_embed.py"
        run = subprocess.run(
            [str(python), str(worker), str(tmp / "job.json"), str(tmp / "vllm.npy")],
            env=env,
            capture_output=True,
            text=True,
        )
        total = time.perf_counter() - start
        if run.returncode != 0:
            raise SystemExit(run.stderr[-4000:])
        theirs = np.load(tmp / "vllm.npy")
        vllm_seconds = json.loads((tmp / "vllm.npy.json").read_text())["seconds"]

    result = {
        "items": len(items),
        "cpu_cores": os.cpu_count(),
        "ours_items_per_s": round(len(items) / ours_seconds, 1),
        "vllm_items_per_s": round(len(items) / vllm_seconds, 1),
        "vllm_startup_s": round(total - vllm_seconds, 1),
        "max_abs_diff": float(np.abs(theirs - ours).max()),
        "model": "tiny qwen2.5-omni, head_dim 32, float32",
    }
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _as_item(d) -> dict | str:
    item = {}
    if d.text is not None:
        item["text"] = d.text
    if d.image is not None:
        item["image"] = d.image
    if d.audio is not None:
        item["audio"] = d.audio
    return item if len(item) != 1 or "text" not in item else item["text"]


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
