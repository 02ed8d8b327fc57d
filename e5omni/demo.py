"""`make demo` / `e5omni demo --output-dir DIR`: the whole product on a laptop CPU in a few minutes.

1. builds the embedded tiny Qwen2.5-Omni model (seeded, offline);
2. evaluates retrieval on the held-out split of the bundled synthetic omni dataset (every modality pair);
3. fine-tunes with the full e5-omni recipe `DEMO_RECIPE` (= configs/demo.yaml: temperatures, curriculum + DCL, whitening
   + CORAL), measuring retrieval on the held-out split every `eval_steps` (`OmniRetrievalEvaluator`): the log shows
   R@1 (Hit@1) and MRR climbing;
4. evaluates again and prints a before/after table (R@1 per modality pair, overall) and the learned temperatures;
5. saves a Hub-ready folder to DIR/model, reloads it through `AutoModel(..., trust_remote_code=True)` and
   `SentenceTransformer(..., trust_remote_code=True)` and checks that both embed identically to the trained model;
6. writes DIR/metrics.json: {"before", "after", "temperatures", "paths_agree_max_abs_diff", ...}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

#: The demo recipe, part of the package (a wheel has no configs/ folder, and the working directory is the user's):
#: `configs/demo.yaml` in the repository is this same text, for `e5omni train --config configs/demo.yaml`
#: (tests/test_proc_demo_config.py keeps the two identical).
DEMO_RECIPE = """\
# Tiny model on CPU: the full e5-omni recipe on the bundled synthetic dataset (used by `make demo`).
model_name_or_path: tiny:qwen2.5-omni
use_peft: false            # the tiny model is trained in full; the 3B/7B recipes use LoRA
train_data: synthetic:train
synthetic_size: 1536        # x 12 epochs / 32 per batch = 576 steps, ~2-3 min on 2 CPU cores
synthetic_difficulty: 0.5
output_dir: demo-output/checkpoints
num_train_epochs: 12
per_device_train_batch_size: 32
learning_rate: 0.001
warmup_steps: 5
lr_scheduler_type: linear
logging_steps: 48
eval_steps: 96              # `make demo` evaluates retrieval on the held-out split every 96 steps (R@1, MRR in the log);
                            # `e5omni train` evaluates only with --eval_data and --eval_strategy steps
save_strategy: "no"
report_to: none
use_cpu: true
seed: 0
# the recipe (docs/paper.md): temperatures, curriculum, DCL, whitening + CORAL
temperature_init: 0.02
temperature_lr: 0.05        # log tau moves ~lr per step; at the backbone's 1e-3 tau would barely leave 0.02 in a demo
rho_init: 0.1
rho_final: 0.5
curriculum_warmup_steps: 40
gamma_plus: 0.1
lambda_coral: 0.05
"""


def resolve_demo_config(config: str | Path | None, output_dir: str | Path) -> Path:
    """The recipe file the demo trains with: `config` when given (a path, relative to the working directory, that
    must exist), else the packaged `DEMO_RECIPE`, written to OUTPUT_DIR/recipe.yaml (so the run records what it
    ran). Nothing is looked up in the repository or the working directory."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"demo recipe not found: {path.resolve()} (--config names a YAML file)")
        return path
    path = Path(output_dir) / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEMO_RECIPE, encoding="utf-8")
    return path


def _table(before: dict, after: dict) -> str:
    from e5omni.evaluation import pair_keys

    rows = [f"{'pair':<20} {'R@1 before':>10} {'R@1 after':>10} {'MRR before':>10} {'MRR after':>10}"]
    for pair in [*pair_keys(after), "overall"]:
        b, a = before[pair], after[pair]
        rows.append(f"{pair:<20} {b['recall@1']:>10.3f} {a['recall@1']:>10.3f} {b['mrr']:>10.3f} {a['mrr']:>10.3f}")
    return "\n".join(rows)


def _progress_callback():
    """Prints one line per evaluation: the held-out R@1 and MRR as training goes."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and "eval_overall_hit@1" in metrics:
                print(
                    f"[demo] step {state.global_step:>4}: held-out R@1 {metrics['eval_overall_hit@1']:.3f}, "
                    f"MRR {metrics['eval_overall_mrr']:.3f}"
                )

    return _Progress()


def _paths_agree(folder: Path, reference, probes) -> float:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    auto = AutoModel.from_pretrained(folder, trust_remote_code=True)
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    ref_docs, ref_queries = reference.encode_document(probes), reference.encode_query(probes[:2])
    diffs = [
        (auto.encode_document(probes) - ref_docs).abs().max().item(),
        (st.encode_document(probes, convert_to_tensor=True) - ref_docs).abs().max().item(),
        (auto.encode_query(probes[:2]) - ref_queries).abs().max().item(),
        (st.encode_query(probes[:2], convert_to_tensor=True) - ref_queries).abs().max().item(),
    ]
    return max(diffs)


def run_demo(output_dir: str | Path = "demo-output", config: str | Path | None = None, overrides=()) -> dict:
    import torch

    from e5omni.data import to_corpus
    from e5omni.data.synthetic import build_synthetic
    from e5omni.evaluation import OmniRetrievalEvaluator, evaluate_retrieval
    from e5omni.train.run import load_examples, load_model, parse_recipe
    from e5omni.train.trainer import E5OmniTrainer

    start = time.perf_counter()
    output_dir = Path(output_dir)
    config = resolve_demo_config(config, output_dir)
    model_args, data_args, args = parse_recipe(
        [
            "--config",
            str(config),
            "--output_dir",
            str(output_dir / "checkpoints"),
            "--disable_tqdm",
            "true",
            "--eval_strategy",  # every eval_steps of the recipe: R@1 in the log (override: --eval_strategy no)
            "steps",
            *overrides,
        ]
    )
    torch.manual_seed(args.seed)
    model = load_model(model_args)
    print(
        f"[demo] tiny model: {model_args.model_name_or_path}, D={model.config.hidden_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters"
    )

    test = build_synthetic("test", seed=data_args.synthetic_seed + 1, difficulty=data_args.synthetic_difficulty)
    corpus = to_corpus(test)
    print(
        f"[demo] held-out synthetic split: {len(corpus.queries)} queries, {len(corpus.corpus)} documents, "
        f"{len(corpus.pairs)} modality pairs (attribute combinations never seen in training)"
    )
    before = evaluate_retrieval(model, corpus, batch_size=64, show_progress_bar=False)

    train = load_examples(data_args.train_data, data_args, "train")
    print(
        f"[demo] fine-tuning on {len(train)} synthetic examples: {args.num_train_epochs:g} epochs, "
        f"batch {args.per_device_train_batch_size}, full recipe (tau, curriculum+DCL, whitening+CORAL)"
    )
    # R@1 while training, on the held-out split the table below reports (watched, never used to pick a checkpoint)
    evaluator = OmniRetrievalEvaluator(corpus, metrics=("hit@1", "mrr"), per_pair=False, batch_size=64)
    trainer = E5OmniTrainer(model, args, train, evaluator=evaluator, callbacks=[_progress_callback()])
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    model = trainer.e5omni_model
    model.eval()
    after = evaluate_retrieval(model, corpus, batch_size=64, show_progress_bar=False)

    print(
        f"\n[demo] retrieval on the held-out split (trained {trainer.state.global_step} steps in {train_seconds:.0f} s)"
    )
    print(_table(before, after))
    temperatures = model.temperatures
    print("\n[demo] learned temperatures: " + ", ".join(f"{m} {t:.4f}" for m, t in temperatures.items()))

    folder = trainer.save_release(output_dir / "model", overwrite=True)
    trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    probes = [test[0]["query"], test[1]["query"], test[2]["positive"], test[3]["positive"], test[6]["positive"]]
    agree = _paths_agree(folder, model, probes)
    print(
        f"[demo] saved a Hub-ready folder to {folder}; AutoModel and SentenceTransformer reloads agree with the "
        f"trained model to {agree:.2e}"
    )
    metrics = {
        "before": before,
        "after": after,
        "temperatures": temperatures,
        "paths_agree_max_abs_diff": agree,
        "train_steps": trainer.state.global_step,
        "eval_history": [
            {"step": h["step"], "hit@1": h["eval_overall_hit@1"], "mrr": h["eval_overall_mrr"]}
            for h in trainer.state.log_history
            if "eval_overall_hit@1" in h
        ],
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"[demo] wrote {output_dir / 'metrics.json'}; total wall time {metrics['wall_seconds']:.0f} s")
    if agree > 1e-5:
        raise RuntimeError(f"the reloaded model does not embed like the trained one (max abs diff {agree:.2e})")
    return metrics
