"""The model card: metadata that parses (and that huggingface_hub reads back), the run's metrics and temperatures,
usage for both entry paths with a pinned revision, budgets from config.json, citation. Substrings, not snapshots."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from e5omni.model_card import (
    ModelCardContextError,
    calibration_summary,
    context_from_folder,
    normalize_metrics,
    render_model_card,
)
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model

TAUS = [0.0130, 0.0127, 0.0219, 0.0223]
METRICS = {
    "before": {
        "text->image": {"recall@1": 0.25, "recall@5": 0.5},
        "text->audio": {"recall@1": 0.125, "recall@5": 0.375},
        "overall": {"recall@1": 0.1875},
    },
    "after": {
        "text->image": {"recall@1": 0.5, "recall@5": 0.875},
        "text->audio": {"recall@1": 0.375, "recall@5": 0.625},
        "overall": {"recall@1": 0.4375},
    },
}
TRAINING = {"learning_rate": 1e-4, "num_train_epochs": 1, "per_device_train_batch_size": 20, "lora_rank": 16}
LOSS = {"temperature": 0.02, "rho_init": 0.1, "rho_final": 0.5, "gamma_plus": 0.1, "lambda_coral": 0.05}


def _split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, meta, body = card.split("---\n", 2)
    return yaml.safe_load(meta), body


@pytest.fixture(scope="module")
def omni_folder(tmp_path_factory):
    model, processor = build_tiny_model("qwen2.5-omni", seed=4)
    with torch.no_grad():
        model.log_temperature.copy_(torch.log(torch.tensor(TAUS)))
        d = model.config.hidden_size
        batch = torch.nn.functional.normalize(torch.randn(32, d, generator=torch.Generator().manual_seed(0)), dim=-1)
        model.alignment.update_running_stats(batch + 0.3, momentum=0.1)
        model.alignment.update_running_stats(batch - 0.1, momentum=0.1)
        model.refresh_whitening()
    return save_hub_folder(model, processor, tmp_path_factory.mktemp("card") / "omni")


@pytest.fixture(scope="module")
def vl_folder(tmp_path_factory):
    model, processor = build_tiny_model("qwen2-vl", seed=4)
    return save_hub_folder(model, processor, tmp_path_factory.mktemp("card") / "vl")


@pytest.fixture(scope="module")
def card(omni_folder):
    context = context_from_folder(
        omni_folder,
        repo_id="me/e5-omni-ft",
        base_model="Qwen/Qwen2.5-Omni-3B",
        datasets=["me/omni-pairs"],
        metrics=METRICS,
        training=TRAINING,
        loss=LOSS,
        eval_dataset={"type": "me/omni-pairs", "name": "omni pairs", "split": "test"},
    )
    return render_model_card(context)


def test_front_matter_parses_and_carries_the_metrics(card):
    meta, _ = _split(card)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "feature-extraction"
    assert meta["license"] == "mit"
    assert meta["base_model"] == "Qwen/Qwen2.5-Omni-3B"
    assert meta["datasets"] == ["me/omni-pairs"]
    assert {"e5-omni", "text", "image", "audio", "video", "sentence-transformers"} <= set(meta["tags"])
    (index,) = meta["model-index"]
    assert index["name"] == "e5-omni-ft"
    got = {
        (result["dataset"]["config"], metric["type"]): metric["value"]
        for result in index["results"]
        for metric in result["metrics"]
    }
    expected = {(pair, m): v for pair, values in METRICS["after"].items() for m, v in values.items()}
    assert got == expected  # the final ("after") run, every pair and metric
    for result in index["results"]:
        assert result["task"]["type"] == "information-retrieval"
        assert result["dataset"]["type"] == "me/omni-pairs" and result["dataset"]["split"] == "test"


def test_huggingface_hub_reads_the_card_back(card):
    parsed = ModelCard(card)
    assert parsed.data.library_name == "sentence-transformers"
    results = {(r.dataset_config, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    assert results[("overall", "recall@1")] == 0.4375 and len(results) == 5


def test_body_has_usage_budgets_temperatures_training_and_citation(card):
    _, body = _split(card)
    for expected in [
        # usage through both entry paths, pinned, with remote code
        'AutoModel.from_pretrained("me/e5-omni-ft", revision="main", trust_remote_code=True)',
        'SentenceTransformer("me/e5-omni-ft", revision="main", trust_remote_code=True)',
        "Pin a revision",
        "encode_query",
        '{"audio": "bark.wav"}',
        # accepted inputs and budgets, from config.json
        "up to 512 tokens",
        "3,136 px",
        "40,000,000 px",
        "truncated to 2 s",
        "up to 4 frames",
        "URLs are never fetched",
        # learned temperatures and calibrated scores
        "| text | 0.0130 |",
        "| audio | 0.0219 |",
        "| video | 0.0223 |",
        "calibrated=True",
        "What calibrated scores mean",
        # whitening statistics and when to enable
        "estimated during training from 2 batches",
        "effective rank of C",
        "When to turn it on",
        "whitening=True",
        # training recipe and hyperparameters
        "| `learning_rate` | 0.0001 |",
        "| `lambda_coral` | 0.05 |",
        "gamma_plus",
        "[`me/omni-pairs`](https://huggingface.co/datasets/me/omni-pairs)",
        # evaluation table with before / after / delta
        "| pair | metric | before | after | Δ |",
        "| text->image | recall@1 | 0.2500 | 0.5000 | +0.2500 |",
        "| overall | recall@1 | 0.1875 | 0.4375 | +0.2500 |",
        # limits and citation
        "## Limitations",
        "arXiv 2601.03666",
        "Findings of the Association for Computational Linguistics: ACL 2026",
        "author={Chen and Gao and Timofte and Sakai and Dou}",
        "tiny, randomly initialised test model",
    ]:
        assert expected in body, expected
    # a text query against an audio document: tau = (0.0130 + 0.0219) / 2, a cosine of 0.5 -> 0.5 / tau
    assert f"| audio | {(0.0130 + 0.0219) / 2:.4f} | {0.5 / ((0.0130 + 0.0219) / 2):.2f} |" in body
    assert "{{" not in body and "{%" not in body


def test_vl_backbone_card_leaves_out_audio(vl_folder):
    card = render_model_card(context_from_folder(vl_folder, repo_id="me/vl"))
    meta, body = _split(card)
    assert "audio" not in meta["tags"] and "video" in meta["tags"]
    assert "| audio |" not in body and "bark.wav" not in body
    assert "Qwen2-VL" in body
    assert "model-index" not in meta and "No evaluation metrics were recorded" in body
    assert "never estimated" in body and "whitening=True" not in body
    assert "These are still the initial value tau_0 = 0.02" in body


def test_pinned_commit_and_single_run_metrics(omni_folder):
    sha = "0123456789abcdef0123456789abcdef01234567"
    card = render_model_card(
        context_from_folder(omni_folder, repo_id="me/pinned", revision=sha, metrics=METRICS["after"])
    )
    meta, body = _split(card)
    assert f'revision="{sha}"' in body and "pin commit" in body and "Pin a revision" not in body
    assert "| pair | metric | result |" in body and "Δ" not in body
    values = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert values["recall@5"] in (0.875, 0.625)


def test_metrics_shapes_and_cell_escaping(omni_folder):
    assert normalize_metrics({"recall@1": 0.5}) == {"result": {"overall": {"recall@1": 0.5}}}
    assert list(normalize_metrics({"after": {"overall": {}}, "before": {"overall": {}}})) == ["before", "after"]
    with pytest.raises(ModelCardContextError, match="mixes"):
        normalize_metrics({"overall": {"recall@1": 0.5}, "recall@1": 0.5})
    card = render_model_card(
        context_from_folder(
            omni_folder,
            metrics={"recall@1": torch.tensor(0.5), "ndcg@10": float("nan")},
            training={"note": "a|b\nc"},
            limitations=["Evaluated on synthetic data only."],
        )
    )
    meta, body = _split(card)
    assert "| `note` | a\\|b c |" in body
    assert "- Evaluated on synthetic data only." in body
    values = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert values == {"recall@1": 0.5}  # NaN kept out of the metadata
    assert "your-namespace/your-e5-omni-model" in body


def test_evaluate_shaped_metrics(omni_folder):
    """e5omni.evaluation.evaluate_retrieval's shape: counts (num_*) are sizes, not scores; two aggregate groups."""
    result = {
        "text->image": {"hit@1": 0.5, "recall@5": 0.75, "mrr": 0.6, "num_queries": 29, "num_candidates": 80},
        "audio->text": {"hit@1": 0.25, "recall@5": 0.5, "mrr": 0.4, "num_queries": 12, "num_candidates": 40},
        "overall": {"hit@1": 0.375, "recall@5": 0.625, "mrr": 0.5, "num_queries": 41, "num_pairs": 2},
        "overall_micro": {"hit@1": 0.42, "recall@5": 0.67, "mrr": 0.54, "num_queries": 41},
    }
    meta, body = _split(render_model_card(context_from_folder(omni_folder, metrics={"after": result})))
    types = {m["type"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert types == {"hit@1", "recall@5", "mrr"}
    assert "num_queries" not in body and "Queries per pair: audio->text 12, text->image 29." in body
    rows = [line for line in body.splitlines() if line.startswith("| ") and "hit@1" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| audio->text", "| text->image", "| overall", "| overall_micro"]


def test_calibration_summary_matches_the_weights(omni_folder):
    summary = calibration_summary(omni_folder)
    assert summary["temperatures"] == pytest.approx(dict(zip(summary["modalities"], TAUS)), rel=1e-5)
    assert summary["temperatures_learned"] is True
    assert summary["log_temperature"] == pytest.approx([math.log(t) for t in TAUS], rel=1e-6)
    whitening = summary["whitening"]
    assert whitening["updates"] == 2 and whitening["estimated"] and not whitening["enabled"]
    assert whitening["dim"] == 64 and 0 < whitening["effective_rank"] <= 64
    assert whitening["matrix_condition_number"] > 1 and whitening["mean_norm"] > 0


def test_missing_context_is_a_clear_error():
    with pytest.raises(ModelCardContextError, match="context_from_folder"):
        render_model_card({"repo_id": "me/x", "metrics": METRICS})
