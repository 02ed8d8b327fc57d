"""Does `e5omni mine` help? No negatives vs random negatives vs mined hard negatives, on the synthetic benchmark.

    python benchmarks/mining.py [--seeds 0 1 2] [--stage-steps 96] [--train-size 768] [--jobs 2] [--quick]

The mine -> train loop of docs/training.md, with the tiny Qwen2.5-Omni model on CPU and the recipe of
configs/demo.yaml (lr 1e-3, batch 32, temperature_lr 0.05, every component on). Per seed:

    stage 1   train `stage-steps` steps on pairs only (the synthetic train set, seed 0, without its scripted
              negatives), from `build_tiny_model(seed)`: the same model for every arm
    stage 2   from that model, `stage-steps` more steps (a fresh trainer: the same warm-up and schedule in every arm):
                none     pairs only
                random   2 negatives a query drawn at random (seeded) from the other examples' positives with the
                         positive's modalities and another content
                mined    2 negatives mined by the stage-1 model with `e5omni.mine.mine` (written as JSONL and read back
                         through `load_data_spec`, as `e5omni train` would): the data's positives as the pool,
                         same_modality, relative_margin 0.05 (NV-Retriever's TopK-PercPos)
    evaluate  R@1 per query->document pair and overall (macro mean over the 9 pairs) on the held-out test split
              (synthetic seed 1: scenes never seen in training), per-pair pools as `e5omni eval` does

The stage-2 arms start from the same weights and see the same batches of queries and positives (same trainer seed),
so the per-seed differences are paired. Each seed runs in its own process (one intra-op thread), `--jobs` at a time.
The last output line is one JSON object; the Markdown table is printed before it.
"""

from __future__ import annotations

import argparse
import copy
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

ARMS = ("none", "random", "mined")
SHORT_PAIRS = {
    "text->image": "t>i",
    "text->audio": "t>a",
    "text->video": "t>v",
    "image->text": "i>t",
    "audio->text": "a>t",
    "video->text": "v>t",
    "text+image->video": "ti>v",
    "audio->text+image": "a>ti",
    "audio+video->text": "av>t",
}


def random_negatives(examples: list[dict], k: int, seed: int) -> list[dict]:
    """Each example with k positives of other examples as negatives: same modalities, another content, seeded."""
    import numpy as np

    from e5omni.data import content_hash, modality_signature

    rng = np.random.default_rng(seed)
    hashes = [content_hash(e["positive"]) for e in examples]
    by_signature: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_signature.setdefault(modality_signature(e["positive"]), []).append(i)
    out = []
    for i, e in enumerate(examples):
        pool = by_signature[modality_signature(e["positive"])]
        chosen: list[int] = []
        seen = {hashes[i]}
        while len(chosen) < k:
            j = pool[int(rng.integers(len(pool)))]
            if hashes[j] not in seen:
                seen.add(hashes[j])
                chosen.append(j)
        out.append({**e, "negatives": [examples[j]["positive"] for j in chosen]})
    return out


def run_seed(seed: int, settings: dict) -> dict:
    """Stage 1, then the three stage-2 arms, each evaluated (runs in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    from benchmarks.ablation import recipe
    from e5omni.data import to_corpus
    from e5omni.data.specs import load_data_spec
    from e5omni.data.synthetic import build_synthetic
    from e5omni.evaluation import encode_corpus, evaluate_retrieval
    from e5omni.mine import MineRules, mine
    from e5omni.tiny import build_tiny_model
    from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments

    config = recipe(None, settings["train_size"])
    pairs_only = build_synthetic("train", n=settings["train_size"], seed=0, difficulty=config["difficulty"])
    pairs_only = [{k: v for k, v in e.items() if k != "negatives"} for e in pairs_only]
    corpus = to_corpus(build_synthetic("test", seed=1, difficulty=config["difficulty"]))

    def train(model, examples, tmp):
        args = E5OmniTrainingArguments(
            output_dir=tmp,
            seed=seed,
            max_steps=settings["stage_steps"],
            logging_steps=settings["stage_steps"],
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            **config["training"],
        )
        trainer = E5OmniTrainer(model, args, examples)
        trainer.train()
        out = trainer.e5omni_model
        out.eval()
        return out

    def evaluate(model) -> dict:
        embeddings = encode_corpus(model, corpus, batch_size=64, show_progress_bar=False)
        metrics = evaluate_retrieval(model, corpus, embeddings=embeddings)
        return {p: m["recall@1"] for p, m in metrics.items() if "->" in p or p == "overall"}

    result: dict = {"seed": seed, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="e5omni-mining-") as tmp:
        model, processor = build_tiny_model("qwen2.5-omni", seed=seed)
        model.set_processor(processor)
        start = time.perf_counter()
        stage1 = train(model, pairs_only, tmp)
        result["seconds"]["stage1"] = round(time.perf_counter() - start, 1)
        result["stage1"] = evaluate(stage1)

        start = time.perf_counter()
        out = Path(tmp) / "mined.jsonl"
        rules = MineRules(num_negatives=2, relative_margin=0.05, same_modality=True)
        summary = mine(stage1, pairs_only, out, rules=rules, chunk_size=256, show_progress_bar=False)
        result["seconds"]["mine"] = round(time.perf_counter() - start, 1)
        result["mine_summary"] = summary.as_dict()
        mined = load_data_spec(str(out))
        data = {"none": pairs_only, "random": random_negatives(pairs_only, 2, seed), "mined": mined}
        for arm in ARMS:
            start = time.perf_counter()
            arm_model = copy.deepcopy(stage1)
            arm_model.set_processor(processor)
            arm_model.train()
            trained = train(arm_model, data[arm], tmp)
            result["seconds"][arm] = round(time.perf_counter() - start, 1)
            result[arm] = evaluate(trained)
            result[f"{arm}_examples"] = len(data[arm])
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
    line = "  ".join(f"{arm} {100 * result[arm]['overall']:.1f}" for arm in ("stage1", *ARMS))
    print(f"  seed {seed}: overall R@1  {line}  ({result['seconds']})", flush=True)
    return result


def table(results: list[dict]) -> str:
    pairs = [p for p in results[0]["none"] if p != "overall"]
    header = "| arm | " + " | ".join(SHORT_PAIRS.get(p, p) for p in pairs) + " | overall | Δ overall vs none |"
    lines = [header, "|" + " --- |" * (len(pairs) + 3)]
    for arm in ("stage1", *ARMS):
        cells = []
        for p in [*pairs, "overall"]:
            values = [100 * r[arm][p] for r in results]
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}")
        if arm in ARMS:
            deltas = [100 * (r[arm]["overall"] - r["none"]["overall"]) for r in results]
            mean = statistics.fmean(deltas)
            std = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
            delta = f"{mean:+.1f} ± {std:.1f}"
        else:
            delta = ""
        label = "stage 1 only (half the steps)" if arm == "stage1" else arm
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stage-steps", type=int, default=96, help="steps of stage 1 and of each stage-2 arm")
    parser.add_argument("--train-size", type=int, default=768)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, 8 + 8 steps, 128 examples (a smoke check)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        spec = json.loads(args.child)
        Path(args.child_out).write_text(json.dumps(run_seed(spec["seed"], spec["settings"])))
        return
    if args.quick:
        args.seeds, args.stage_steps, args.train_size = args.seeds[:1], 8, 128
    settings = {"stage_steps": args.stage_steps, "train_size": args.train_size}
    start = time.perf_counter()
    print(f"mining benchmark: seeds {args.seeds}, {settings}, {args.jobs} job(s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="e5omni-mining-bench-") as workdir:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda s: launch(s, settings, Path(workdir)), args.seeds))
    print()
    print(table(results))
    removed = {}
    for r in results:
        for rule, count in r["mine_summary"]["removed"].items():
            removed[rule] = removed.get(rule, 0) + count
    print()
    print("mined: candidates removed per rule, summed over seeds:", {k: v for k, v in removed.items() if v})
    print(
        json.dumps(
            {
                "settings": settings,
                "seeds": args.seeds,
                "wall_seconds": round(time.perf_counter() - start, 1),
                "runs": [{k: v for k, v in r.items() if k != "mine_summary"} for r in results],
                "mine_summaries": [r["mine_summary"] for r in results],
            }
        )
    )


if __name__ == "__main__":
    main()
