"""Peak-memory growth of one training step at batch 64 vs batch 8, with GradCache (`CachedE5OmniLoss`) and without.

    python benchmarks/gradcache_memory.py [--small 8] [--large 64] [--mini-batch 8] [--tokens 256] [--threads 1]

The backbone is the tiny Qwen2.5-Omni thinker of `e5omni.tiny` with its language model enlarged so that activations
dominate: text hidden 512, 4 layers, 8 heads (4 KV heads), MLP 1024 (~12M parameters, 50 MB in fp32). Items are text
of ``--tokens`` tokens (~256 by default, plus the chat template); each example is a query and a positive (two columns),
so batch B runs 2B sequences through the model.

Each measurement runs in a fresh subprocess, because peak RSS never goes down inside one process:

1. build the model, the `SentenceTransformer` and the loss (full e5-omni recipe: temperatures, curriculum + DCL,
   whitening + CORAL), pre-process the batch, and allocate every parameter's gradient buffer, so that weights,
   gradients and inputs are all in the baseline;
2. ``gc.collect()``, ``malloc_trim(0)``, read the idle baseline (VmRSS), then reset the kernel's peak-RSS watermark
   (``echo 5 > /proc/self/clear_refs``, which resets ``ru_maxrss`` too);
3. one training step: loss forward + backward (+ an SGD update, which allocates nothing);
4. growth = ``ru_maxrss`` after the step - the baseline.

So the growth is what the step's activations (and the loss's own buffers) cost; no optimiser state (constant in the
batch size) is counted. If ``clear_refs`` cannot be written, the watermark is not reset and the baseline is the
``ru_maxrss`` before the step (model building may then hide a small step). Single-threaded by default.

Two allocator settings, both reported. glibc's malloc raises its mmap threshold dynamically (up to 32 MB) once
large blocks are freed, after which freed activations stay in its heap instead of going back to the OS: the peak RSS
of a step that allocates and frees many mini-batches then also measures that retention, which differs from run to
run. The headline figures therefore run the children with ``MALLOC_MMAP_THRESHOLD_=131072`` (large blocks always
mmap'ed and unmapped on free, so RSS follows the live tensors); the same four measurements with glibc's defaults are
reported next to them (``*_glibc_default``).

Targets: with the cached loss, growth(64) / growth(8) <= 1.3 (the activations of one mini-batch of ``--mini-batch``
sequences are alive at a time); without it the growth scales with the batch. The last output line is one JSON object
(``rss_64_vs_8``: cached, ``rss_64_vs_8_uncached``).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEXT_CONFIG = {
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    # head_dim 64 -> 32 rotary frequencies split over (temporal, height, width), in Qwen's 1:1.5:1.5 proportion
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
}


def build(seed: int = 0):
    """(model, processor): the tiny omni thinker with the enlarged language model above."""
    import torch

    from e5omni.tiny import build_backbone_config, build_processor, build_tokenizer
    from modeling_e5omni import E5OmniConfig, E5OmniModel, E5OmniProcessor

    tokenizer = build_tokenizer("qwen2.5-omni")
    backbone = build_backbone_config("qwen2.5-omni", tokenizer).to_dict()
    backbone["text_config"].update(TEXT_CONFIG)
    backbone["text_config"].pop("layer_types", None)  # derived again from num_hidden_layers
    backbone["vision_config"]["out_hidden_size"] = TEXT_CONFIG["hidden_size"]
    backbone["audio_config"]["output_dim"] = TEXT_CONFIG["hidden_size"]
    config = E5OmniConfig(
        backbone_config=backbone,
        max_pixels=56 * 56,
        min_pixels=28 * 28,
        max_frames=4,
        max_audio_seconds=2.0,
        max_length=1024,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = E5OmniModel(config)
    processor = E5OmniProcessor(build_processor("qwen2.5-omni", tokenizer), config=config)
    model.set_processor(processor)
    return model, processor


def make_texts(tokenizer, n: int, tokens: int, seed: int) -> list[str]:
    """`n` distinct texts of exactly `tokens` tokens each (random words of the tiny tokenizer's corpus)."""
    import numpy as np

    from e5omni.tiny import _CORPUS

    words = sorted({w for line in _CORPUS for w in line.split()})
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        ids: list[int] = []
        while len(ids) < tokens:
            ids = tokenizer(" ".join(rng.choice(words, size=2 * tokens)), add_special_tokens=False)["input_ids"]
        texts.append(tokenizer.decode(ids[:tokens]))
    return texts


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(batch: int, cached: bool, mini_batch: int, tokens: int) -> dict:
    """One training step in this (fresh) process; returns the peak-RSS growth over the idle baseline."""
    import torch

    from e5omni.train.losses import CachedE5OmniLoss, E5OmniLoss
    from modeling_e5omni.sentence_e5omni import sentence_transformer

    model, processor = build()
    st = sentence_transformer(model, processor)
    st.train()
    kwargs = {"curriculum_warmup_steps": 0}
    loss = CachedE5OmniLoss(st, mini_batch_size=mini_batch, **kwargs) if cached else E5OmniLoss(st, **kwargs)
    loss.set_step(1, 2)
    texts = make_texts(processor.tokenizer, 2 * batch, tokens, seed=batch)
    module = st[0]
    features = [module.preprocess(texts[:batch], prompt="Query: "), module.preprocess(texts[batch:])]
    for column, f in enumerate(features):
        f["content_hash"] = torch.arange(batch) + 10_000 * column
    seq_len = int(features[0]["input_ids"].shape[1])
    params = [p for p in st.parameters() if p.requires_grad]
    for p in params:  # gradient buffers belong to the baseline: the same size at every batch
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.SGD(params, lr=1e-4)

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    baseline_kb = _rss_kb()
    reset = _reset_peak()
    if not reset:
        baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    components = loss([dict(f) for f in features], None)
    total = sum(components.values())
    total.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "batch": batch,
        "cached": cached,
        "sequences": 2 * batch,
        "seq_len": seq_len,
        "baseline_mb": baseline_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "growth_mb": (peak_kb - baseline_kb) / 1024,
        "peak_reset": reset,
        "step_seconds": seconds,
        "loss": float(total),
        "parameters_m": sum(p.numel() for p in params) / 1e6,
    }


MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run_child(batch: int, cached: bool, args, allocator_env: dict) -> dict:
    spec = json.dumps({"batch": batch, "cached": cached, "mini_batch": args.mini_batch, "tokens": args.tokens})
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", **allocator_env})
    proc = subprocess.run(
        [sys.executable, __file__, "--child", spec], env=env, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement batch={batch} cached={cached} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=8)
    parser.add_argument("--large", type=int, default=64)
    parser.add_argument("--mini-batch", type=int, default=8, help="GradCache mini-batch size (sequences)")
    parser.add_argument("--tokens", type=int, default=256, help="text tokens per item (before the chat template)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-glibc-default", action="store_true", help="only the MALLOC_MMAP_THRESHOLD_ run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import torch

        spec = json.loads(args.child)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(measure(spec["batch"], spec["cached"], spec["mini_batch"], spec["tokens"])))
        return {}

    import torch

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), fp32, CPU; text hidden {TEXT_CONFIG['hidden_size']}, "
        f"{TEXT_CONFIG['num_hidden_layers']} layers, MLP {TEXT_CONFIG['intermediate_size']}; items of {args.tokens} "
        f"text tokens; query + positive per example; GradCache mini-batch {args.mini_batch}; one fresh process per row",
        flush=True,
    )
    small, large = args.small, args.large
    settings = {"mmap": ("MALLOC_MMAP_THRESHOLD_=131072 (RSS follows live tensors)", MMAP_THRESHOLD)}
    if not args.skip_glibc_default:
        settings["default"] = ("glibc defaults (dynamic mmap threshold: freed blocks may stay resident)", {})
    results: dict[str, dict] = {}
    for key, (label, allocator_env) in settings.items():
        print(f"\n== allocator: {label}", flush=True)
        rows = results[key] = {}
        for cached in (True, False):
            for batch in (small, large):
                rows[(cached, batch)] = r = run_child(batch, cached, args, allocator_env)
                print(
                    f"  {'cached' if cached else 'uncached':<9} batch {batch:>3} ({r['sequences']:>3} sequences of "
                    f"{r['seq_len']} tokens): baseline {r['baseline_mb']:6.0f} MB, peak {r['peak_mb']:6.0f} MB, "
                    f"growth {r['growth_mb']:6.0f} MB  (step {r['step_seconds']:.1f} s)",
                    flush=True,
                )
        if not all(r["peak_reset"] for r in rows.values()):
            print("  (note: /proc/self/clear_refs not writable; baselines are ru_maxrss before the step)")
        cached_ratio = rows[(True, large)]["growth_mb"] / rows[(True, small)]["growth_mb"]
        uncached_ratio = rows[(False, large)]["growth_mb"] / rows[(False, small)]["growth_mb"]
        rows["ratios"] = (cached_ratio, uncached_ratio)
        print(
            f"  growth batch {large} / batch {small}: with GradCache {cached_ratio:.2f}x (target <= 1.3x), "
            f"without {uncached_ratio:.2f}x; at batch {large} GradCache needs "
            f"{rows[(False, large)]['growth_mb'] / rows[(True, large)]['growth_mb']:.1f}x less",
            flush=True,
        )

    rows = results["mmap"]
    figures = {
        "rss_64_vs_8": round(rows["ratios"][0], 3),
        "rss_64_vs_8_uncached": round(rows["ratios"][1], 3),
        "growth_mb_cached_8": round(rows[(True, small)]["growth_mb"], 1),
        "growth_mb_cached_64": round(rows[(True, large)]["growth_mb"], 1),
        "growth_mb_uncached_8": round(rows[(False, small)]["growth_mb"], 1),
        "growth_mb_uncached_64": round(rows[(False, large)]["growth_mb"], 1),
    }
    if "default" in results:
        rows = results["default"]
        figures.update(
            {
                "rss_64_vs_8_glibc_default": round(rows["ratios"][0], 3),
                "rss_64_vs_8_uncached_glibc_default": round(rows["ratios"][1], 3),
                "growth_mb_cached_8_glibc_default": round(rows[(True, small)]["growth_mb"], 1),
                "growth_mb_cached_64_glibc_default": round(rows[(True, large)]["growth_mb"], 1),
            }
        )
    first = results["mmap"][(True, small)]
    figures.update(
        {
            "baseline_mb": round(first["baseline_mb"], 1),
            "seq_len": first["seq_len"],
            "mini_batch": args.mini_batch,
            "parameters_m": round(first["parameters_m"], 2),
        }
    )
    if (small, large) != (8, 64):  # the keys name the default sizes
        figures["small"], figures["large"] = small, large
    assert all(math.isfinite(v) for v in figures.values() if isinstance(v, float))
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
