"""Overhead of the full e5-omni loss over plain InfoNCE, and how whitening scales with D, measured side by side.

    python benchmarks/loss_overhead.py [--rows 640] [--dim 3584] [--negatives 2] [--repeats 5] [--threads 1]

1. Forward + backward of E5OmniLoss with every component on (per-modality temperatures, curriculum at mid-schedule,
   DCL, batch whitening + CORAL; logits on raw embeddings, the default) against the same module with every switch
   off (InfoNCE at a fixed temperature), on ``--rows`` gathered query rows, as many positives, ``--negatives`` hard
   negatives per query, dimension D. The two runs alternate and the medians are compared (target <= 2x). The
   whitening residual diagnostic is computed lazily when the trainer reads it, so it is not in the timed step.
2. ``batch_whiten`` forward + backward on a fixed N = ``--whiten-rows`` < D at D and 2D (target growth <= 2.3x:
   in the N x N Gram space the cost is O(N^2 D + N^3), not O(D^3)); the CORAL path the loss uses is timed too.

Single-threaded by default: on a shared 2-core machine the OpenMP hand-off between 2 threads costs milliseconds per
op and swamps the comparison. The last output line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from e5omni.train.losses import E5OmniLoss, batch_whiten, whitened_coral_loss  # noqa: E402


class TemperatureHolder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor([0.013, 0.0127, 0.0219, 0.0223]).log())


def make_inputs(rows: int, dim: int, negatives: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    columns = 2 + negatives
    embeddings = [F.normalize(torch.randn(rows, dim, generator=gen), dim=-1) for _ in range(columns)]
    embeddings[1] = F.normalize(embeddings[0] + 0.8 * embeddings[1], dim=-1)
    masks = []
    for _ in range(columns):
        mask = torch.rand(rows, 4, generator=gen) < 0.35
        mask[~mask.any(1), 0] = True
        masks.append(mask)
    hashes = [torch.randint(0, 2**62, (rows,), generator=gen) for _ in range(columns)]
    return embeddings, masks, hashes


def time_call(fn, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def loss_overhead(rows: int, dim: int, negatives: int, repeats: int) -> dict[str, float]:
    embeddings, masks, hashes = make_inputs(rows, dim, negatives)
    full = E5OmniLoss(TemperatureHolder())
    full.set_step(7000, 10000)  # rho_t = 0.3, mid-ramp
    plain = E5OmniLoss(None, use_temperature=False, use_curriculum=False, use_dcl=False, use_whitening_coral=False)

    def step(loss):
        leaves = [e.clone().requires_grad_() for e in embeddings]
        out = loss.compute_loss_from_embeddings(leaves, masks, hashes)
        torch.stack(list(out.values())).sum().backward()

    times = {"plain": [], "full": []}
    step(plain), step(full)  # warm-up
    for _ in range(repeats):
        for name, loss in (("plain", plain), ("full", full)):
            times[name].append(time_call(lambda loss=loss: step(loss), warmup=0))
    plain_s, full_s = statistics.median(times["plain"]), statistics.median(times["full"])
    diagnostics = full.last_diagnostics
    return {
        "plain_s": plain_s,
        "full_s": full_s,
        "ratio": full_s / plain_s,
        "whitening_residual": diagnostics["whitening_residual"],
        "kept": diagnostics["negatives_kept_fraction"],
    }


def whitening_growth(rows: int, dim: int, repeats: int) -> dict[str, float]:
    results = {}
    for name, d in (("d", dim), ("2d", 2 * dim)):
        gen = torch.Generator().manual_seed(1)
        x = F.normalize(torch.randn(rows, d, generator=gen), dim=-1)
        weights = torch.randn(rows, d, generator=gen)

        def whiten(x=x, weights=weights):
            leaf = x.clone().requires_grad_()
            (batch_whiten(leaf) * weights).sum().backward()

        def coral(x=x):
            leaf = x.clone().requires_grad_()
            whitened_coral_loss(leaf[: rows // 2], leaf[rows // 2 :])[0].backward()

        whiten(), coral()
        results[f"whiten_{name}_s"] = statistics.median(time_call(whiten, 0) for _ in range(repeats))
        results[f"coral_{name}_s"] = statistics.median(time_call(coral, 0) for _ in range(repeats))
    results["whiten_growth"] = results["whiten_2d_s"] / results["whiten_d_s"]
    results["coral_growth"] = results["coral_2d_s"] / results["coral_d_s"]
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=640, help="gathered query rows (queries = positives)")
    parser.add_argument("--dim", type=int, default=3584, help="embedding dimension D (7B: 3584)")
    parser.add_argument("--negatives", type=int, default=2, help="hard negatives per query")
    parser.add_argument("--whiten-rows", type=int, default=640, help="N for the whitening growth (N < D)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.whiten_rows >= args.dim:
        parser.error("--whiten-rows must be smaller than --dim (the N < D regime)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, CPU")
    main_run = loss_overhead(args.rows, args.dim, args.negatives, args.repeats)
    # The other reading of "N = 640 gathered rows": 640 rows in the whitening batch (= 320 query/positive pairs).
    half_run = loss_overhead(args.rows // 2, args.dim, args.negatives, args.repeats)
    growth = whitening_growth(args.whiten_rows, args.dim, args.repeats)

    print(
        f"\n[1] loss forward + backward, D={args.dim}, {args.negatives} hard negatives per query (median of {args.repeats})"
    )
    print(f"{'query rows':>11} {'whitened rows':>14} {'InfoNCE s':>10} {'full s':>8} {'full/InfoNCE':>13}")
    for run, rows in ((main_run, args.rows), (half_run, args.rows // 2)):
        print(f"{rows:>11} {2 * rows:>14} {run['plain_s']:>10.3f} {run['full_s']:>8.3f} {run['ratio']:>12.2f}x")
    print(
        f"    (diagnostics of the full run: whitening residual {main_run['whitening_residual']:.3f}, "
        f"negatives kept {main_run['kept']:.3f})"
    )
    print(f"\n[2] whitening forward + backward at fixed N={args.whiten_rows} (median of {args.repeats})")
    print(f"{'':>22} {'D=' + str(args.dim):>10} {'2D=' + str(2 * args.dim):>10} {'growth':>8}")
    print(
        f"{'batch_whiten':>22} {growth['whiten_d_s']:>10.3f} {growth['whiten_2d_s']:>10.3f} {growth['whiten_growth']:>7.2f}x"
    )
    print(
        f"{'whitened_coral_loss':>22} {growth['coral_d_s']:>10.3f} {growth['coral_2d_s']:>10.3f} {growth['coral_growth']:>7.2f}x"
    )
    ideal = (2 * args.whiten_rows**2 * 2 * args.dim + args.whiten_rows**3) / (
        2 * args.whiten_rows**2 * args.dim + args.whiten_rows**3
    )
    print(f"    (an O(D^3) algorithm would grow 8x; O(N^2 D + N^3) flops predict {ideal:.2f}x)")

    figures = {
        "full_vs_infonce": round(main_run["ratio"], 3),
        "whitening_growth_2d": round(growth["whiten_growth"], 3),
        "full_vs_infonce_half_rows": round(half_run["ratio"], 3),
        "coral_growth_2d": round(growth["coral_growth"], 3),
        "infonce_s": round(main_run["plain_s"], 4),
        "full_s": round(main_run["full_s"], 4),
        "rows": args.rows,
        "dim": args.dim,
        "negatives": args.negatives,
        "whiten_rows": args.whiten_rows,
        "threads": torch.get_num_threads(),
    }
    assert all(math.isfinite(v) for v in figures.values())
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
