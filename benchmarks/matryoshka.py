"""Does Matryoshka training keep truncated embeddings useful? R@1 at each dimension, Matryoshka-trained vs not.

    python benchmarks/matryoshka.py [--seeds 0 1 2] [--steps 160] [--train-size 768] [--dims 32 16 8] [--jobs 2]
                                    [--quick]

The tiny Qwen2.5-Omni model (hidden size 64) on CPU with the recipe of configs/demo.yaml (lr 1e-3, batch 32,
temperature_lr 0.05, every component on), trained `--steps` steps on the synthetic train set (seed 0) from
`build_tiny_model(seed)` in two arms:

    full        the e5-omni loss at the full dimension only (today's training)
    matryoshka  the same loss with --matryoshka_dims 32,16,8 (weights 1; the full 64 added at weight 1)

Both arms start from the same weights and see the same batches (same trainer seed), so per-seed differences are
paired. Each trained model encodes the held-out test split (synthetic seed 1) once at full dimension; every
dimension's vectors are the first d components re-normalised (`truncate_embeddings`, what `truncate_dim` does),
ranked per pair as `e5omni eval` does; R@1 is the macro mean over the 9 query->document pairs. The untrained model
is evaluated too (the floor). Each seed runs in its own process (one intra-op thread), `--jobs` at a time. The last
output line is one JSON object; the Markdown table is printed before it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = ("untrained", "full", "matryoshka")


def r_at_1_by_dim(model, corpus, dims: list[int]) -> dict[str, float]:
    """Overall (macro over pairs) R@1 of `model` on `corpus` at the full dimension and at each of `dims`."""
    import torch

    from e5omni.evaluation import encode_corpus, evaluate_retrieval
    from e5omni.evaluation.embeddings import CorpusEmbeddings
    from modeling_e5omni.modeling_e5omni import truncate_embeddings

    full = encode_corpus(model, corpus, batch_size=64, show_progress_bar=False)
    out = {}
    for d in [full.query_embeddings.shape[1], *dims]:
        cut = CorpusEmbeddings(
            query_ids=full.query_ids,
            query_embeddings=truncate_embeddings(torch.from_numpy(full.query_embeddings), d).numpy(),
            doc_ids=full.doc_ids,
            doc_embeddings=truncate_embeddings(torch.from_numpy(full.doc_embeddings), d).numpy(),
        )
        out[str(d)] = evaluate_retrieval(model, corpus, embeddings=cut)["overall"]["recall@1"]
    return out


def run_seed(seed: int, settings: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from benchmarks.ablation import recipe
    from e5omni.data import to_corpus
    from e5omni.data.synthetic import build_synthetic
    from e5omni.tiny import build_tiny_model
    from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments

    config = recipe(None, settings["train_size"])
    examples = build_synthetic("train", n=settings["train_size"], seed=0, difficulty=config["difficulty"])
    corpus = to_corpus(build_synthetic("test", seed=1, difficulty=config["difficulty"]))
    dims = settings["dims"]
    result: dict = {"seed": seed, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="e5omni-matryoshka-") as tmp:
        for arm in ARMS:
            model, processor = build_tiny_model("qwen2.5-omni", seed=seed)
            model.set_processor(processor)
            start = time.perf_counter()
            if arm != "untrained":
                extra = {"matryoshka_dims": ",".join(map(str, dims))} if arm == "matryoshka" else {}
                args = E5OmniTrainingArguments(
                    output_dir=tmp,
                    seed=seed,
                    max_steps=settings["steps"],
                    logging_steps=settings["steps"],
                    save_strategy="no",
                    report_to="none",
                    use_cpu=True,
                    disable_tqdm=True,
                    **config["training"],
                    **extra,
                )
                trainer = E5OmniTrainer(model, args, examples)
                trainer.train()
                model = trainer.e5omni_model
                result[f"{arm}_final_log"] = {
                    k: round(v, 4) for k, v in trainer.state.log_history[-2].items() if k.startswith(("dcl", "loss"))
                }
            model.eval()
            result["seconds"][arm] = round(time.perf_counter() - start, 1)
            result[arm] = r_at_1_by_dim(model, corpus, dims)
    return result


def launch(seed: int, settings: dict, workdir: Path) -> dict:
    out = workdir / f"seed-{seed}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    spec = json.dumps({"seed": seed, "settings": settings})
    proc = subprocess.run(
        [sys.executable, __file__, "--child", spec, "--child-out", str(out)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    result = json.loads(out.read_text())
    line = "  ".join(f"{arm} " + "/".join(f"{100 * v:.1f}" for v in result[arm].values()) for arm in ARMS)
    print(f"  seed {seed}: R@1 by dim  {line}  ({result['seconds']})", flush=True)
    return result


def table(results: list[dict]) -> str:
    dims = list(results[0]["full"])
    header = "| arm | " + " | ".join(f"R@1 @ {d}" for d in dims) + " |"
    lines = [header, "|" + " --- |" * (len(dims) + 1)]

    def cell(values):
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"

    for arm in ARMS:
        cells = [cell([100 * r[arm][d] for r in results]) for d in dims]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    deltas = [cell([100 * (r["matryoshka"][d] - r["full"][d]) for r in results]) for d in dims]
    lines.append("| Δ matryoshka − full (paired) | " + " | ".join(deltas) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=160, help="training steps of each arm")
    parser.add_argument("--train-size", type=int, default=768)
    parser.add_argument("--dims", type=int, nargs="+", default=[32, 16, 8], help="truncated dimensions (< 64)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, 8 steps, 128 examples (a smoke check)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        spec = json.loads(args.child)
        Path(args.child_out).write_text(json.dumps(run_seed(spec["seed"], spec["settings"])))
        return
    if args.quick:
        args.seeds, args.steps, args.train_size = args.seeds[:1], 8, 128
    settings = {"steps": args.steps, "train_size": args.train_size, "dims": sorted(args.dims, reverse=True)}
    start = time.perf_counter()
    print(f"matryoshka benchmark: seeds {args.seeds}, {settings}, {args.jobs} job(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="e5omni-matryoshka-bench-") as workdir:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda s: launch(s, settings, Path(workdir)), args.seeds))
    print()
    print(table(results))
    print(
        json.dumps(
            {
                "settings": settings,
                "seeds": args.seeds,
                "wall_seconds": round(time.perf_counter() - start, 1),
                "runs": results,
            }
        )
    )


if __name__ == "__main__":
    main()
