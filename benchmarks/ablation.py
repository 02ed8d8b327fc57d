"""Ablation of the e5-omni recipe on the bundled synthetic benchmark, with the tiny model, on CPU.

    python benchmarks/ablation.py [--seeds 0 1 2] [--epochs 12] [--jobs N] [--variants ...] [--quick]

Trains the tiny Qwen2.5-Omni model (`e5omni.tiny`) with the CPU recipe of `configs/demo.yaml` (1536 synthetic
examples x 12 epochs = 576 steps of batch 32, lr 1e-3, temperature_lr 0.05, warm-up 5, t0 = 40, rho 0.1 -> 0.5,
gamma_plus 0.1, lambda_coral 0.05) in the rows of the paper's ablation, plus a control:

    full                  every component on
    no_temperature        use_temperature=False      (one fixed tau = temperature_init = 0.02)
    no_curriculum         use_curriculum=False       (every admissible negative kept)
    no_dcl                use_dcl=False              (InfoNCE over the positive and the kept negatives)
    no_whitening_coral    use_whitening_coral=False  (no CORAL term)
    infonce               all four off               (plain InfoNCE at tau = 0.02)
    control               full with lambda_coral x 1.01: a change that cannot matter; its paired difference to
                          `full` is the noise floor of every other row

Same data and the same number of steps in every run. Data: one training set (synthetic seed 0) and one held-out
test set (synthetic seed 1: scenes never seen in training, as in `make demo`) for every run. The run seed sets the
model initialisation (`build_tiny_model(seed=...)`) and the trainer seed (batch order): a variant and the full
recipe with the same seed start from the same weights and see the same batches, so the per-seed difference is a
paired comparison. Each run is a fresh subprocess with one intra-op thread, deterministic on CPU; `--jobs` of them
run at a time (default: one per usable core, at most 4; the results do not depend on it).

Reported: R@1 (= Hit@1: one relevant document per query) per query->document modality pair and overall (macro mean
over the 9 pairs), mean +- sample std over seeds, in percent; overall MRR; the paired difference to the full recipe;
the diagnostics of `e5omni.evaluation.alignment_diagnostics` (learned temperatures; query/target centroid distance and
covariance gap, mean over pairs of the per-pair values); what each component can change on one training batch
(`mechanism_diagnostics`); the test set's own sampling error. Every run's metrics, diagnostics and training log
(loss, dcl, coral, tau, rho, negatives kept) go to benchmarks/ablation_results.json. The last output line is one
JSON object. `--quick` (1 seed, 256 examples, 1 epoch = 8 steps) is a smoke check and writes to the temp folder.
"""

from __future__ import annotations

import argparse
import json
import math
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

RESULTS_JSON = REPO / "benchmarks" / "ablation_results.json"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"

OFF = {"use_temperature": False, "use_curriculum": False, "use_dcl": False, "use_whitening_coral": False}
VARIANTS: dict[str, dict] = {
    "full": {},
    "no_temperature": {"use_temperature": False},
    "no_curriculum": {"use_curriculum": False},
    "no_dcl": {"use_dcl": False},
    "no_whitening_coral": {"use_whitening_coral": False},
    "infonce": OFF,
    # Control: a change that cannot matter (CORAL's weight x 1.01; its gradient is ~1e-4 of the contrastive one). Its
    # paired difference to the full recipe is the noise floor of every other row: training is chaotic enough that a
    # perturbation in the 5th significant digit ends somewhere else.
    "control": {"lambda_coral": "x1.01"},
}
LABELS = {
    "untrained": "untrained (reference)",
    "full": "full recipe",
    "no_temperature": "w/o temperature",
    "no_curriculum": "w/o curriculum",
    "no_dcl": "w/o DCL",
    "no_whitening_coral": "w/o whitening+CORAL",
    "infonce": "plain InfoNCE",
    "control": "control: full, λ_coral x1.01",
}
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
# Keys of configs/demo.yaml that are not E5OmniTrainingArguments fields, or that this script sets itself.
_NOT_TRAINING_ARGS = {"model_name_or_path", "use_peft", "train_data", "synthetic_size", "synthetic_difficulty"}
_OWN_ARGS = {"output_dir", "seed", "num_train_epochs", "logging_steps", "save_strategy", "report_to", "use_cpu"}


def _usable_cores(cap: int = 4) -> int:
    """Default number of parallel runs: one per usable core, at most `cap` (each run holds ~1.2 GB)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, cap))


def recipe(epochs: float | None, train_size: int | None) -> dict:
    """The demo recipe (configs/demo.yaml) with this benchmark's overrides."""
    import yaml

    config = yaml.safe_load(DEMO_CONFIG.read_text())
    training = {k: v for k, v in config.items() if k not in _NOT_TRAINING_ARGS | _OWN_ARGS}
    return {
        "train_size": train_size or config["synthetic_size"],
        "difficulty": config["synthetic_difficulty"],
        "epochs": epochs if epochs is not None else config["num_train_epochs"],
        "training": training,
    }


# ----------------------------------------------------------------------------------------------- one run (child)
PROBE_SIZE = 32  # the first PROBE_SIZE training examples: one batch of the recipe, the same for every run


def mechanism_diagnostics(model, probe: list[dict], rho: float, gamma_plus: float, lambda_coral: float) -> dict:
    """How much each component can change the loss on one training batch (the probe), for this model's embeddings.

    Candidates of query i: the batch's positives and hard negatives (96 for 32 examples with 2 negatives each),
    minus its own positive and anything with the same content as it or as the query. Logits cos / tau(q, d) with the
    model's temperatures. Returned (means over the batch's queries):

    - ``masked_mass``: share of the negatives' softmax mass sum_j exp(S_ij) that the curriculum removes at ``rho``
      (the easiest ``rho`` fraction of each row); ~0 means masking them cannot change the loss or its gradient;
    - ``dcl_correction``: gamma_plus exp(S_ii) / sum_{kept j} exp(S_ij), the fraction of the kept negatives' mass that
      DCL subtracts (0 = InfoNCE); ``dcl_floor_rows``: share of rows where the subtraction hits the floor;
    - ``coral_grad_ratio``: ||d(lambda_coral L_coral)/dE|| / ||d L_DCL/dE|| over all the batch's embeddings
      (E5OmniLoss with every component on), i.e. how much CORAL steers the embeddings relative to the contrastive term;
    - ``positive_rank1``: share of rows whose positive has the largest logit.
    """
    import torch

    from e5omni.data import content_hash, item_modalities
    from e5omni.train.losses import E5OmniLoss

    queries = [e["query"] for e in probe]
    columns = [[e["positive"] for e in probe]] + [[e["negatives"][k] for e in probe] for k in range(2)]
    docs = [item for column in columns for item in column]  # column-major, like the loss
    q = model.encode_query(queries, batch_size=64, show_progress_bar=False)
    d = model.encode_document(docs, batch_size=64, show_progress_bar=False)
    q_mask = torch.tensor([item_modalities(x) for x in queries])
    d_mask = torch.tensor([item_modalities(x) for x in docs])
    q_hash = torch.tensor([content_hash(x) for x in queries])
    d_hash = torch.tensor([content_hash(x) for x in docs])
    tau = model.pair_temperature(q_mask, d_mask)  # (B, N)
    logits = (q @ d.T) / tau  # (B, N)
    b = len(queries)
    rows = torch.arange(b)
    positive = logits[rows, rows]  # (B,)
    admissible = (d_hash[None, :] != d_hash[:b, None]) & (d_hash[None, :] != q_hash[:, None])  # (B, N)
    masked_mass, correction, floor_rows, rank1 = [], [], 0, 0
    for i in range(b):
        neg = logits[i][admissible[i]].sort(descending=True).values  # hardest first
        n = neg.numel()
        keep = math.ceil((1 - rho) * n - 1e-9)
        weights = torch.softmax(neg, 0)
        masked_mass.append(weights[keep:].sum().item())
        kept_mass = torch.logsumexp(neg[:keep], 0)
        ratio = (math.log(gamma_plus) + positive[i] - kept_mass).exp().item()
        correction.append(min(ratio, 1.0))
        floor_rows += ratio >= 1.0
        rank1 += bool(positive[i] > neg[0])
    # CORAL vs DCL gradients on the embeddings, through the real loss
    loss = E5OmniLoss(
        model, curriculum_warmup_steps=0, rho_init=rho, rho_final=rho, gamma_plus=gamma_plus, lambda_coral=lambda_coral
    )
    leaves = [q.clone().requires_grad_()] + [d[k * b : (k + 1) * b].clone().requires_grad_() for k in range(3)]
    masks = [q_mask] + [d_mask[k * b : (k + 1) * b] for k in range(3)]
    hashes = [q_hash] + [d_hash[k * b : (k + 1) * b] for k in range(3)]
    out = loss.compute_loss_from_embeddings(leaves, masks, hashes, log_temperature=model.log_temperature.detach())
    grads = {}
    for name in ("dcl", "coral"):
        g = torch.autograd.grad(out[name], leaves, retain_graph=True, allow_unused=True)
        grads[name] = math.sqrt(sum(float((x * x).sum()) for x in g if x is not None))
    return {
        "masked_mass": statistics.fmean(masked_mass),
        "dcl_correction": statistics.fmean(correction),
        "dcl_floor_rows": floor_rows / b,
        "coral_grad_ratio": grads["coral"] / grads["dcl"] if grads["dcl"] > 0 else float("nan"),
        "positive_rank1": rank1 / b,
        "candidates": int(admissible.sum(1).float().mean()),
    }


def run_one(variant: str, seed: int, settings: dict, with_untrained: bool) -> dict:
    """Train one variant with one seed and evaluate it on the held-out split (runs in a fresh process)."""
    import torch

    torch.set_num_threads(1)
    from e5omni.data import to_corpus
    from e5omni.data.synthetic import build_synthetic
    from e5omni.evaluation import alignment_diagnostics, encode_corpus, evaluate_retrieval
    from e5omni.tiny import build_tiny_model
    from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments

    start = time.perf_counter()
    train = build_synthetic("train", n=settings["train_size"], seed=0, difficulty=settings["difficulty"])
    corpus = to_corpus(build_synthetic("test", seed=1, difficulty=settings["difficulty"]))
    model, processor = build_tiny_model("qwen2.5-omni", seed=seed)
    model.set_processor(processor)

    def evaluate(m) -> dict:
        embeddings = encode_corpus(m, corpus, batch_size=64, show_progress_bar=False)
        metrics = evaluate_retrieval(m, corpus, embeddings=embeddings)
        return {"metrics": metrics, "diagnostics": alignment_diagnostics(m, corpus, embeddings)}

    t = settings["training"]

    def mechanisms(m) -> dict:  # at the recipe's values: what each component would do to this model's embeddings
        m.eval()
        return mechanism_diagnostics(m, train[:PROBE_SIZE], t["rho_final"], t["gamma_plus"], t["lambda_coral"])

    result: dict = {"variant": variant, "seed": seed, "mechanisms_before": mechanisms(model)}
    if with_untrained:
        result["untrained"] = evaluate(model)
    with tempfile.TemporaryDirectory(prefix="e5omni-ablation-") as tmp:
        args = E5OmniTrainingArguments(
            output_dir=tmp,
            seed=seed,
            num_train_epochs=settings["epochs"],
            logging_steps=settings["logging_steps"],
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            **training_args(settings["training"], VARIANTS[variant]),
        )
        trainer = E5OmniTrainer(model, args, train)
        train_start = time.perf_counter()
        trainer.train()
        result["train_seconds"] = round(time.perf_counter() - train_start, 1)
        result["steps"] = trainer.state.global_step
        model = trainer.e5omni_model
        model.eval()
        result["log"] = [
            {k: v for k, v in entry.items() if k not in ("epoch", "grad_norm")}
            for entry in trainer.state.log_history
            if "loss" in entry
        ]
    result.update(evaluate(model))
    result["mechanisms_after"] = mechanisms(model)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def training_args(recipe_args: dict, overrides: dict) -> dict:
    """The recipe's arguments with a variant's overrides ("xF" multiplies the recipe's value by F)."""
    out = dict(recipe_args)
    for key, value in overrides.items():
        out[key] = out[key] * float(value[1:]) if isinstance(value, str) and value.startswith("x") else value
    return out


# --------------------------------------------------------------------------------------------- orchestration
def launch(variant: str, seed: int, settings: dict, with_untrained: bool, workdir: Path) -> dict:
    out = workdir / f"{variant}-{seed}.json"
    spec = json.dumps({"variant": variant, "seed": seed, "settings": settings, "with_untrained": with_untrained})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", spec, "--child-out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"run {variant} seed {seed} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    result = json.loads(out.read_text())
    print(
        f"  {variant:<20} seed {seed}: overall R@1 {100 * result['metrics']['overall']['recall@1']:5.1f}  "
        f"({result['steps']} steps, train {result['train_seconds']:.0f} s, wall {result['wall_seconds']:.0f} s)",
        flush=True,
    )
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = _mean_std([scale * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def _pm_sci(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.1e} ± {std:.1e}" if len(values) > 1 else f"{mean:.1e}"


def _pair_mean(diagnostics: dict, key: str) -> float:
    values = [p[key] for p in diagnostics["pairs"].values() if p.get(key) is not None]
    return statistics.fmean(values)


def _test_standard_error(metrics: dict, pairs: list[str]) -> float:
    """Binomial standard error of the macro-averaged R@1 from the finite test set alone (one run)."""
    variance = (
        sum(metrics[p]["recall@1"] * (1 - metrics[p]["recall@1"]) / metrics[p]["num_queries"] for p in pairs)
        / len(pairs) ** 2
    )
    return math.sqrt(variance)


def summarise(runs: list[dict], seeds: list[int]) -> dict:
    """Per variant: per-pair and overall R@1, MRR, paired deltas to full, diagnostics (lists over seeds)."""
    by_variant: dict[str, dict[int, dict]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], {})[run["seed"]] = run
        if "untrained" in run:
            untrained = {**run["untrained"], "mechanisms_after": run.get("mechanisms_before")}
            by_variant.setdefault("untrained", {})[run["seed"]] = untrained
    pairs = [k for k in runs[0]["metrics"] if "->" in k]
    summary: dict = {}
    for variant in ["untrained", *VARIANTS]:
        if variant not in by_variant:
            continue
        per_seed = [by_variant[variant][s] for s in seeds if s in by_variant[variant]]
        entry = {
            "seeds": [s for s in seeds if s in by_variant[variant]],
            "recall@1": {p: [r["metrics"][p]["recall@1"] for r in per_seed] for p in [*pairs, "overall"]},
            "mrr": [r["metrics"]["overall"]["mrr"] for r in per_seed],
            "temperatures": {
                m: [r["diagnostics"]["temperatures"][m] for r in per_seed] for m in ("text", "image", "audio", "video")
            },
            "centroid_distance": [_pair_mean(r["diagnostics"], "centroid_distance") for r in per_seed],
            "covariance_gap": [_pair_mean(r["diagnostics"], "covariance_gap") for r in per_seed],
            "centroid_distance_stacked": [r["diagnostics"]["overall"]["centroid_distance"] for r in per_seed],
            "covariance_gap_stacked": [r["diagnostics"]["overall"]["covariance_gap"] for r in per_seed],
            "logit_entropy_normalized": [r["diagnostics"]["overall"]["logit_entropy_normalized"] for r in per_seed],
            "test_standard_error": [_test_standard_error(r["metrics"], pairs) for r in per_seed],
        }
        if all(r.get("mechanisms_after") for r in per_seed):
            entry["mechanisms"] = {
                key: [r["mechanisms_after"][key] for r in per_seed] for key in per_seed[0]["mechanisms_after"]
            }
        if variant != "untrained" and "full" in by_variant:
            common = [s for s in entry["seeds"] if s in by_variant["full"]]
            entry["delta_overall_vs_full"] = [
                by_variant[variant][s]["metrics"]["overall"]["recall@1"]
                - by_variant["full"][s]["metrics"]["overall"]["recall@1"]
                for s in common
            ]
            entry["final_loss"] = [by_variant[variant][s]["log"][-1]["loss"] for s in entry["seeds"]]
            entry["train_seconds"] = [by_variant[variant][s]["train_seconds"] for s in entry["seeds"]]
        summary[variant] = entry
    return {"pairs": pairs, "variants": summary}


def tables(summary: dict) -> str:
    pairs = summary["pairs"]
    variants = summary["variants"]
    lines = [
        "R@1 (%) on the held-out synthetic split, mean ± std over seeds; overall = macro mean over the 9 pairs; "
        "Δ = paired difference to the full recipe (same seed), mean ± std",
        "",
        "| variant | " + " | ".join(SHORT_PAIRS.get(p, p) for p in pairs) + " | overall | Δ overall | MRR |",
        "|---|" + "---|" * (len(pairs) + 3),
    ]
    for variant, entry in variants.items():
        cells = [_pm(entry["recall@1"][p]) for p in pairs]
        delta = _pm(entry["delta_overall_vs_full"]) if entry.get("delta_overall_vs_full") else "-"
        if variant == "full":
            delta = "0"
        lines.append(
            f"| {LABELS[variant]} | "
            + " | ".join(cells)
            + f" | **{_pm(entry['recall@1']['overall'])}** | {delta} | {_pm(entry['mrr'])} |"
        )
    lines += [
        "",
        "Pairs: " + ", ".join(f"{v} = {k}" for k, v in SHORT_PAIRS.items() if k in pairs),
        "",
        "Diagnostics (mean ± std over seeds): learned tau per modality; query/target centroid distance and covariance "
        "gap ||Cov(Q) - Cov(P)||_F, mean over the 9 pairs of the per-pair values; normalised logit entropy (1 = "
        "uniform); last logged training loss (not comparable across loss types)",
        "",
        "| variant | tau text | tau image | tau audio | tau video | centroid dist | cov gap | entropy | final loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, entry in variants.items():
        taus = [_pm(entry["temperatures"][m], 1.0, 4) for m in ("text", "image", "audio", "video")]
        loss = _pm(entry["final_loss"], 1.0, 3) if entry.get("final_loss") else "-"
        lines.append(
            f"| {LABELS[variant]} | "
            + " | ".join(taus)
            + f" | {_pm(entry['centroid_distance'], 1.0, 3)} | {_pm(entry['covariance_gap'], 1.0, 4)}"
            + f" | {_pm(entry['logit_entropy_normalized'], 1.0, 3)} | {loss} |"
        )
    with_mechanisms = {v: e for v, e in variants.items() if e.get("mechanisms")}
    if with_mechanisms:
        lines += [
            "",
            f"What each component can change, on one training batch ({PROBE_SIZE} examples, ~95 candidates per query) "
            "with the final embeddings, at the recipe's rho_final, gamma_plus and lambda_coral whether or not the row "
            "trained with the component (mean ± std over seeds; `untrained` = before training): share of the negatives' "
            "softmax mass in the easiest half that the curriculum masks at rho = 0.5; share of the kept negatives' mass "
            "that DCL subtracts (gamma_plus exp(S_ii) / sum exp(S_ij), capped at 1) and share of rows at the DCL floor "
            "(zero gradient); ||grad of lambda_coral L_coral|| / ||grad of L_DCL|| on the embeddings; share of queries "
            "whose positive ranks first",
            "",
            "| variant | masked mass | DCL subtracts | rows at DCL floor | CORAL / DCL gradient | positive first |",
            "|---|---|---|---|---|---|",
        ]
        for variant, entry in with_mechanisms.items():
            m = entry["mechanisms"]
            lines.append(
                f"| {LABELS[variant]} | {_pm_sci(m['masked_mass'])} | {_pm(m['dcl_correction'], 1.0, 3)} | "
                f"{_pm(m['dcl_floor_rows'], 1.0, 3)} | {_pm_sci(m['coral_grad_ratio'])} | "
                f"{_pm(m['positive_rank1'], 1.0, 3)} |"
            )
    se = variants.get("full", {}).get("test_standard_error")
    if se:
        lines += [
            "",
            f"Test-set noise: the binomial standard error of one run's overall R@1 from the finite held-out set is "
            f"{100 * statistics.fmean(se):.1f} points (about 29 queries per pair).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=None, help="default: configs/demo.yaml's (12)")
    parser.add_argument("--train-size", type=int, default=None, help="default: configs/demo.yaml's (1536)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--jobs",
        type=int,
        default=_usable_cores(),
        help="runs at a time, one thread each (default: usable cores, at most 4)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 seed, 256 examples, 1 epoch")
    parser.add_argument(
        "--override",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="change the recipe for every variant, e.g. lambda_coral=5 (results then go to the temp folder)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_JSON, help="full results (JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # one run, in this fresh process
        spec = json.loads(args.child)
        result = run_one(spec["variant"], spec["seed"], spec["settings"], spec["with_untrained"])
        Path(args.child_out).write_text(json.dumps(result))
        return result

    if args.quick:
        args.seeds = args.seeds[:1]
        args.epochs = 1 if args.epochs is None else args.epochs
        args.train_size = args.train_size or 256
        if args.output == RESULTS_JSON:  # never overwrite the full results with a smoke run
            args.output = Path(tempfile.gettempdir()) / "ablation_results_quick.json"
    settings = recipe(args.epochs, args.train_size)
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep or key not in settings["training"]:
            parser.error(f"--override {item!r}: expected KEY=VALUE with KEY in {sorted(settings['training'])}")
        settings["training"][key] = json.loads(value)
    if args.override and args.output == RESULTS_JSON:  # never overwrite the recipe's results with a modified recipe
        args.output = Path(tempfile.gettempdir()) / "ablation_results_override.json"
    batch = settings["training"]["per_device_train_batch_size"]
    steps = math.ceil(settings["train_size"] / batch) * settings["epochs"]
    settings["logging_steps"] = max(1, round(steps / 48))
    t = settings["training"]
    setting_line = (
        f"tiny qwen2.5-omni (hidden 64, 2 layers), full fine-tuning; {settings['train_size']} synthetic train examples "
        f"(seed 0, difficulty {settings['difficulty']}) x {settings['epochs']:g} epochs = {steps:g} steps of batch "
        f"{batch} (+ 2 hard negatives per query: {batch * 3} candidates per query); lr {t['learning_rate']}, "
        f"temperature_lr {t['temperature_lr']}, tau0 {t['temperature_init']}, warm-up {t['warmup_steps']}, "
        f"rho {t['rho_init']} -> {t['rho_final']} from step {t['curriculum_warmup_steps']}, gamma_plus "
        f"{t['gamma_plus']}, lambda_coral {t['lambda_coral']}; seeds {args.seeds}; held-out test split (synthetic "
        f"seed 1); CPU, 1 thread per run, {args.jobs} run(s) at a time"
    )
    print(f"[ablation] {setting_line}", flush=True)

    start = time.perf_counter()
    plan = [(v, s) for s in args.seeds for v in args.variants]
    with tempfile.TemporaryDirectory(prefix="e5omni-ablation-runs-") as workdir:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(launch, v, s, settings, v == args.variants[0], Path(workdir)) for v, s in plan]
            runs = [f.result() for f in futures]
    wall = time.perf_counter() - start

    summary = summarise(runs, args.seeds)
    text = tables(summary)
    print("\n" + text)
    print(f"\n[ablation] {len(runs)} runs in {wall / 60:.1f} min")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "settings": {
                    **settings,
                    "seeds": args.seeds,
                    "steps": steps,
                    "jobs": args.jobs,
                    "description": setting_line,
                },
                "summary": summary,
                "table_markdown": text,
                "runs": runs,
                "wall_seconds": round(wall, 1),
            },
            indent=1,
        )
        + "\n"
    )
    print(f"[ablation] wrote {args.output}")

    variants = summary["variants"]
    figures: dict = {}
    for variant, entry in variants.items():
        mean, std = _mean_std(entry["recall@1"]["overall"])
        figures[f"{variant}_r1"] = round(100 * mean, 2)
        figures[f"{variant}_r1_std"] = round(100 * std, 2)
        if entry.get("delta_overall_vs_full") and variant != "full":
            figures[f"{variant}_delta"] = round(100 * statistics.fmean(entry["delta_overall_vs_full"]), 2)
    if variants.get("full", {}).get("test_standard_error"):
        figures["test_standard_error"] = round(100 * statistics.fmean(variants["full"]["test_standard_error"]), 2)
    figures.update(
        {"seeds": len(args.seeds), "steps": steps, "epochs": settings["epochs"], "minutes": round(wall / 60, 1)}
    )
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
