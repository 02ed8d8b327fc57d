"""Retrieval metrics on hand-made rankings, evaluate_retrieval on the tiny model, diagnostics, writers, plots, CLI."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from e5omni.cli.evaluate import add_eval_parser
from e5omni.data import RetrievalCorpus, content_hash, to_corpus
from e5omni.data.synthetic import SyntheticOmniConfig, build_synthetic
from e5omni.evaluation import (
    CorpusEmbeddings,
    EmbeddingCacheError,
    EvaluationError,
    alignment_diagnostics,
    benchmark_category,
    diagnostics_markdown,
    encode_corpus,
    evaluate_retrieval,
    headline_metrics,
    hit_at_k,
    metric_names,
    metrics_markdown,
    ndcg_at_k,
    pair_keys,
    plot_covariance_difference,
    plot_temperature_trajectories,
    ranked_relevance,
    recall_at_k,
    reciprocal_rank,
    retrieval_metrics,
    temperature_history,
    write_json,
    write_markdown,
    write_plots,
)
from e5omni.tiny import build_tiny, build_tiny_model
from tests.conftest import tiny

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = SyntheticOmniConfig(image_size=32, num_frames=2, audio_seconds=0.5, num_negatives=2)


def d(rank: int) -> float:
    """The NDCG discount of a 1-based rank."""
    return 1 / math.log2(rank + 1)


# ------------------------------------------------------------------------------------------------------------ metrics
def test_single_relevant_without_ties():
    scores = [0.9, 0.8, 0.7, 0.6]
    relevant = [False, False, True, False]  # rank 3
    assert hit_at_k(scores, relevant, 1) == [0.0]
    assert hit_at_k(scores, relevant, 3) == [1.0]
    assert hit_at_k(scores, relevant, 10) == [1.0]  # k beyond the pool = the whole pool
    assert recall_at_k(scores, relevant, 2) == [0.0]
    assert recall_at_k(scores, relevant, 3) == [1.0]
    assert ndcg_at_k(scores, relevant, 5) == pytest.approx([d(3)])  # 0.5
    assert ndcg_at_k(scores, relevant, 2) == [0.0]
    assert reciprocal_rank(scores, relevant) == pytest.approx([1 / 3])


def test_multiple_relevant_recall_is_a_fraction_and_hit_is_any():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    relevant = [0, 1, 0, 0, 1]  # ranks 2 and 5; 0/1 ints are accepted
    m = retrieval_metrics(scores, relevant, ks=(1, 2, 5))
    assert m["hit@1"] == [0.0] and m["hit@2"] == [1.0]
    assert m["recall@2"] == [0.5] and m["recall@5"] == [1.0]
    assert m["ndcg@2"] == pytest.approx([d(2) / (d(1) + d(2))])  # 0.3869
    assert m["ndcg@5"] == pytest.approx([(d(2) + d(5)) / (d(1) + d(2))])  # 0.6241
    assert m["mrr"] == [0.5]
    assert list(m) == metric_names((1, 2, 5))


def test_ties_are_pessimistic():
    # All equal: the relevant document goes after every tied non-relevant one (a collapsed model scores worst).
    flat = retrieval_metrics([0.5] * 4, [True, False, False, False], ks=(1, 3, 4))
    assert flat["hit@1"] == [0.0] and flat["recall@3"] == [0.0]
    assert flat["mrr"] == [0.25] and flat["ndcg@4"] == pytest.approx([d(4)])
    # Partial tie: one clear winner above, three tied, relevant among them -> rank 1 + 3 = 4.
    partial = retrieval_metrics([0.9, 0.7, 0.7, 0.7, 0.1], [0, 1, 0, 0, 0], ks=(3, 4))
    assert partial["mrr"] == [0.25] and partial["hit@3"] == [0.0] and partial["hit@4"] == [1.0]
    # Ties among relevant documents only: their relative order does not matter for binary metrics.
    among = retrieval_metrics([0.5, 0.5, 0.5], [1, 1, 0], ks=(1, 2))
    assert among["mrr"] == [0.5] and among["recall@2"] == [0.5] and among["hit@1"] == [0.0]
    # -0.0 and 0.0 are the same score.
    assert reciprocal_rank([0.0, -0.0], [True, False]) == [0.5]
    # The tie rule does not depend on where the relevant document sits in the pool.
    assert reciprocal_rank([0.5] * 4, [0, 0, 0, 1]) == reciprocal_rank([0.5] * 4, [1, 0, 0, 0])


def _reference(scores, relevant, k):
    """Independent pessimistic ranking: groups of equal score, non-relevant first within a group."""
    ranked = []
    for value in sorted(set(scores), reverse=True):
        group = [r for s, r in zip(scores, relevant) if s == value]
        ranked += sorted(group)  # False < True
    ranks = [i + 1 for i, r in enumerate(ranked) if r]
    total = len(ranks)
    ideal = sum(d(i) for i in range(1, min(total, k) + 1))
    return {
        f"hit@{k}": float(ranks[0] <= k),
        f"recall@{k}": sum(r <= k for r in ranks) / total,
        f"ndcg@{k}": sum(d(r) for r in ranks if r <= k) / ideal,
        "mrr": 1 / ranks[0],
    }


def test_matches_a_brute_force_reference_on_random_tied_rankings():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(200, 9)).astype(float)  # few distinct values: ties everywhere
    relevant = rng.random((200, 9)) < 0.3
    relevant[np.arange(200), rng.integers(0, 9, 200)] = True
    ks = (1, 3, 5)
    got = retrieval_metrics(torch.from_numpy(scores), torch.from_numpy(relevant), ks=ks)  # torch inputs work too
    for i in range(200):
        for k in ks:
            for name, value in _reference(scores[i].tolist(), relevant[i].tolist(), k).items():
                assert got[name][i] == pytest.approx(value), (i, name)


def test_rows_are_independent_queries():
    ranked = ranked_relevance([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]], [[0, 0, 1], [0, 0, 1]])
    assert ranked.tolist() == [[False, False, True], [True, False, False]]


@pytest.mark.parametrize(
    "scores, relevant, k, message",
    [
        ([0.1, float("nan")], [True, False], 1, "NaN in query rows \\[0\\]"),
        ([[0.1, 0.2], [0.3, 0.4]], [[1, 0], [0, 0]], 1, "query rows \\[1\\] have no relevant"),
        ([0.1, 0.2], [True], 1, "must both be \\(Q, N\\)"),
        ([0.1, 0.2], [2, 0], 1, "binary relevance"),
        ([0.1, 0.2], [True, False], 0, "k must be a positive int"),
    ],
)
def test_metric_errors_name_the_problem(scores, relevant, k, message):
    with pytest.raises(EvaluationError, match=message):
        hit_at_k(scores, relevant, k)


# ------------------------------------------------------------------------------------------------ evaluate_retrieval
@pytest.fixture(scope="module")
def small_examples():
    return build_synthetic("test", n=18, seed=0, config=SMALL)  # every pair twice


@pytest.fixture(scope="module")
def full_corpus():
    return to_corpus(build_synthetic("test", seed=0))  # 261 queries, 639 documents: encodes in ~1 s


def _count_encodes(monkeypatch, model) -> Counter:
    calls: Counter = Counter()
    original = model.encode

    def counting(items, role="document", **kwargs):
        for item in items:
            calls[(role, content_hash(item))] += 1
        return original(items, role=role, **kwargs)

    monkeypatch.setattr(model, "encode", counting)
    return calls


def test_evaluate_encodes_each_distinct_item_once_and_reports_every_pair(monkeypatch, small_examples):
    model = tiny("qwen2.5-omni")
    calls = _count_encodes(monkeypatch, model)
    corpus = to_corpus(small_examples)
    result = evaluate_retrieval(model, small_examples, batch_size=8, show_progress_bar=False)

    assert max(calls.values()) == 1
    assert sum(role == "query" for role, _ in calls) == len({content_hash(q) for q in corpus.queries.values()})
    assert sum(role == "document" for role, _ in calls) == len(corpus.corpus)
    assert pair_keys(result) == corpus.pairs and len(corpus.pairs) == 9
    for key in pair_keys(result) + ["overall", "overall_micro"]:
        for name in ("hit@1", "recall@1", "recall@5", "ndcg@5", "ndcg@10", "mrr"):
            assert 0.0 <= result[key][name] <= 1.0, (key, name)
    assert result["overall"]["num_queries"] == len(corpus.queries) == result["overall_micro"]["num_queries"]
    assert result["overall"]["num_pairs"] == 9
    assert result["text->image"]["num_candidates"] == len(corpus.candidates["text->image"])
    macro = np.mean([result[p]["mrr"] for p in pair_keys(result)])
    assert result["overall"]["mrr"] == pytest.approx(macro)  # overall = macro over pairs


def test_identical_queries_of_different_pairs_are_encoded_once(monkeypatch):
    model = tiny("qwen2.5-omni")
    calls = _count_encodes(monkeypatch, model)
    examples = [
        {"query": "a red circle", "positive": "doc one", "negatives": ["doc two"], "pair": "text->text"},
        {"query": "a red circle", "positive": "doc two", "negatives": ["doc one"], "pair": "text->caption"},
    ]
    corpus = to_corpus(examples)
    assert len(corpus.queries) == 2  # two qids (one per pair) ...
    embeddings = encode_corpus(model, corpus, show_progress_bar=False)
    assert sum(role == "query" for role, _ in calls) == 1  # ... one encoding
    np.testing.assert_array_equal(embeddings.query_embeddings[0], embeddings.query_embeddings[1])


def test_untrained_model_scores_near_chance(full_corpus):
    result = evaluate_retrieval(tiny("qwen2.5-omni"), full_corpus, show_progress_bar=False)
    # One relevant document among N: chance Hit@1 = 1/N and chance MRR = H_N / N (about 1.3% and 6% here).
    chance_hit = np.mean([1 / result[p]["num_candidates"] for p in pair_keys(result)])
    chance_mrr = np.mean(
        [sum(1 / r for r in range(1, n + 1)) / n for n in (result[p]["num_candidates"] for p in pair_keys(result))]
    )
    assert result["overall"]["hit@1"] < 4 * chance_hit
    assert 0.5 * chance_mrr < result["overall"]["mrr"] < 2 * chance_mrr


def test_oracle_embeddings_score_perfectly_and_collapsed_ones_worst(full_corpus):
    rng = np.random.default_rng(0)
    doc_ids, query_ids = list(full_corpus.corpus), list(full_corpus.queries)
    docs = rng.normal(size=(len(doc_ids), 16)).astype(np.float32)
    row = {did: i for i, did in enumerate(doc_ids)}
    queries = np.stack([docs[row[next(iter(full_corpus.qrels[q]))]] for q in query_ids])  # query = its positive
    oracle = evaluate_retrieval(None, full_corpus, embeddings=CorpusEmbeddings(query_ids, queries, doc_ids, docs))
    assert all(oracle["overall"][name] == 1.0 for name in ("hit@1", "recall@5", "ndcg@10", "mrr"))

    ones_q, ones_d = np.ones((len(query_ids), 16), np.float32), np.ones((len(doc_ids), 16), np.float32)
    collapsed = evaluate_retrieval(None, full_corpus, embeddings=CorpusEmbeddings(query_ids, ones_q, doc_ids, ones_d))
    assert collapsed["overall"]["hit@1"] == 0.0
    for pair in pair_keys(collapsed):
        assert collapsed[pair]["mrr"] == pytest.approx(1 / collapsed[pair]["num_candidates"])  # last place


def test_calibrated_ranking_equals_cosine_ranking_in_homogeneous_pools(small_examples):
    model = tiny("qwen2.5-omni")
    corpus = to_corpus(small_examples)
    embeddings = encode_corpus(model, corpus, show_progress_bar=False)
    plain = evaluate_retrieval(model, corpus, embeddings=embeddings)
    calibrated = evaluate_retrieval(model, corpus, embeddings=embeddings, calibrated=True)
    assert plain == calibrated


def test_embedding_cache_reuses_and_refuses_other_models(tmp_path, monkeypatch, small_examples):
    model = tiny("qwen2.5-omni")
    corpus = to_corpus(small_examples)
    cache = tmp_path / "emb.npz"
    first = encode_corpus(model, corpus, cache_path=cache, show_progress_bar=False)
    assert cache.is_file()
    calls = _count_encodes(monkeypatch, model)
    second = encode_corpus(model, corpus, cache_path=cache, show_progress_bar=False)
    assert not calls  # everything came from the cache
    np.testing.assert_array_equal(first.doc_embeddings, second.doc_embeddings)
    np.testing.assert_array_equal(first.query_embeddings, second.query_embeddings)

    other, processor = build_tiny_model("qwen2.5-omni", seed=1)
    other.set_processor(processor)
    with pytest.raises(EmbeddingCacheError, match="different model"):
        encode_corpus(other, corpus, cache_path=cache)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(EmbeddingCacheError, match="not a readable .npz"):
        encode_corpus(model, corpus, cache_path=tmp_path / "junk.npz")


def test_corpus_errors_are_typed():
    corpus = RetrievalCorpus(
        queries={"q0": "x"}, corpus={"d0": "y", "d1": "z"}, qrels={"q0": {"d1": 1}},
        query_pair={"q0": "text->text"}, candidates={"text->text": ["d0"]},
    )  # fmt: skip
    emb = CorpusEmbeddings(["q0"], np.ones((1, 4), "f4"), ["d0", "d1"], np.ones((2, 4), "f4"))
    with pytest.raises(EvaluationError, match="relevant document d1 is not in the pair's candidate pool"):
        evaluate_retrieval(None, corpus, embeddings=emb)
    with pytest.raises(EvaluationError, match="must be \\(2, D\\)"):
        CorpusEmbeddings(["q0"], np.ones((1, 4), "f4"), ["d0", "d1"], np.ones((3, 4), "f4"))
    with pytest.raises(EvaluationError, match="pass a model"):
        evaluate_retrieval(None, corpus)


# --------------------------------------------------------------------------------------------------- conventions
def test_benchmark_conventions():
    assert benchmark_category("text->audio") == benchmark_category("audio->text") == "audio-text"
    assert benchmark_category("text->image", visual_document=True) == "visdoc"
    assert benchmark_category("text+image->video") == benchmark_category("audio+video->text") == "video"
    assert benchmark_category("audio->text+image") == "image"
    assert benchmark_category("text->text") == "other"
    with pytest.raises(EvaluationError, match="not a pair name"):
        benchmark_category("text")
    result = {
        "text->audio": {"hit@1": 0.3, "hit@5": 0.6, "hit@10": 0.8, "ndcg@5": 0.5},
        "text->image": {"hit@1": 0.4, "hit@5": 0.7, "hit@10": 0.9, "ndcg@5": 0.55},
        "overall": {},
    }
    heads = headline_metrics(result, visual_document_pairs=["text->image"])
    assert heads["text->audio"]["R@1"] == 0.3 and heads["text->audio"]["R@10"] == 0.8
    assert heads["text->image"] == {"convention": "MMEB-V2 visual document: NDCG@5", "NDCG@5": 0.55}
    assert heads["overall"]["score"] == pytest.approx((0.3 + 0.55) / 2)


# --------------------------------------------------------------------------------------------------- diagnostics
def test_alignment_diagnostics_are_finite_and_complete(small_examples):
    model = tiny("qwen2.5-omni")
    corpus = to_corpus(small_examples)
    diag = alignment_diagnostics(model, corpus, show_progress_bar=False)
    assert diag["temperatures"] == pytest.approx({"text": 0.02, "image": 0.02, "audio": 0.02, "video": 0.02})
    assert list(diag["pairs"]) == corpus.pairs
    for row in list(diag["pairs"].values()) + [diag["overall"]]:
        for key in ("pair_temperature", "logit_entropy", "logit_entropy_normalized", "logit_std",
                    "positive_probability", "positive_cosine", "negative_cosine", "centroid_distance",
                    "covariance_gap", "coral"):  # fmt: skip
            assert row[key] is not None and math.isfinite(row[key]), key
        assert 0.0 <= row["logit_entropy_normalized"] <= 1.0 + 1e-9
    assert diag["pairs"]["text->image"]["pair_temperature"] == pytest.approx(0.02)


def test_diagnostics_geometry_on_hand_made_embeddings():
    """Queries = targets shifted by a constant: the centroid distance is the shift, the covariance gap is zero."""
    model = tiny("qwen2.5-omni")
    examples = [{"query": f"q{i}", "positive": f"p{i}", "pair": "text->text"} for i in range(3)]
    corpus = to_corpus(examples)
    targets = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    shift = np.array([0.1, -0.2, 0.2], np.float32)
    emb = CorpusEmbeddings(list(corpus.queries), targets + shift, list(corpus.corpus), targets)
    diag = alignment_diagnostics(model, corpus, emb)
    row = diag["pairs"]["text->text"]
    assert row["centroid_distance"] == pytest.approx(0.3)
    assert row["covariance_gap"] == pytest.approx(0.0, abs=1e-6)  # float32 embeddings
    # Calibrated logits are cos / 0.02 over a 3-candidate pool; entropy of softmax is in (0, log 3).
    assert 0 < row["logit_entropy"] < math.log(3)


# ------------------------------------------------------------------------------------------------------- writers
def test_markdown_and_json_writers(tmp_path, small_examples):
    model = tiny("qwen2.5-omni")
    corpus = to_corpus(small_examples)
    emb = encode_corpus(model, corpus, show_progress_bar=False)
    result = evaluate_retrieval(model, corpus, embeddings=emb)
    diag = alignment_diagnostics(model, corpus, emb)
    table = metrics_markdown(result)
    lines = table.splitlines()
    assert lines[0].startswith("| pair | queries | candidates | Hit@1 (%) |") and "NDCG@5 (%)" in lines[0]
    assert "NDCG@1 (%)" not in lines[0]  # equal to Hit@1 under binary relevance
    assert any(line.startswith("| text->audio |") and "AudioCaps-style" in line for line in lines)
    assert any(line.startswith("| text->video |") and "MMEB-V2 video: Hit@1" in line for line in lines)
    assert "overall (macro over pairs)" in table and "overall (micro over queries)" in table
    assert "| audio+video->text |" in diagnostics_markdown(diag)

    md = write_markdown(result, tmp_path / "eval.md", diagnostics=diag, title="synthetic")
    assert "### Alignment diagnostics" in md.read_text()
    path = write_json({"before": result, "nan": float("nan"), "arr": np.arange(2)}, tmp_path / "m.json")
    loaded = json.loads(path.read_text())
    assert loaded["before"]["overall"]["mrr"] == result["overall"]["mrr"]
    assert loaded["nan"] is None and loaded["arr"] == [0, 1]


# --------------------------------------------------------------------------------------------------------- plots
def test_plots_are_valid_pngs(tmp_path, small_examples):
    corpus = to_corpus(small_examples)
    emb = encode_corpus(tiny("qwen2.5-omni"), corpus, show_progress_bar=False)
    state = {"log_history": [
        {"step": s, "loss": 2.0 - s / 100, "tau_text": 0.02 - s * 1e-5, "tau_image": 0.02 - s * 2e-5,
         "tau_audio": 0.02 + s * 1e-5, "tau_video": 0.02 + s * 5e-6}
        for s in range(0, 100, 10)
    ] + [{"step": 100, "train_runtime": 12.0}]}  # fmt: skip
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    paths = write_plots(corpus, emb, tmp_path / "plots", log_history=tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["covariance_difference.png", "similarity_histograms.png", "temperatures.png"]
    paths.append(plot_covariance_difference(corpus, emb, tmp_path / "projected.png", max_dims=8))  # PCA basis path
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, path


def test_temperature_history_formats_and_errors(tmp_path):
    log = [{"step": 5, "train/tau_text": 0.02}, {"step": 1, "temperature/image": 0.03, "tau_text": 0.01}]
    history = temperature_history(log)
    assert history["text"][0].tolist() == [1.0, 5.0] and history["text"][1].tolist() == [0.01, 0.02]
    assert history["image"][1].tolist() == [0.03]
    with pytest.raises(EvaluationError, match="no temperatures in the log history"):
        plot_temperature_trajectories([{"step": 1, "loss": 1.0}], tmp_path / "t.png")
    with pytest.raises(EvaluationError, match="no training log at"):
        temperature_history(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------------- CLI
def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser


def test_eval_cli_on_a_saved_model(tmp_path, capsys):
    model_dir = build_tiny(tmp_path / "model", seed=0)
    args = _eval_parser().parse_args([
        "eval", str(model_dir), "--data", "synthetic:test", "--limit", "18", "--batch-size", "8",
        "--output", str(tmp_path / "report.json"), "--markdown", str(tmp_path / "report.md"),
        "--plots", str(tmp_path / "plots"), "--ks", "1,5", "--cache", str(tmp_path / "emb.npz"),
    ])  # fmt: skip
    assert args.func(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= {"metrics", "headline", "diagnostics", "model", "data"}
    assert "text->image" in report["metrics"] and "hit@5" in report["metrics"]["overall"]
    assert "| text->audio |" in (tmp_path / "report.md").read_text()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "covariance_difference.png",
        "similarity_histograms.png",
    ]
    out = capsys.readouterr()
    assert "| pair | queries |" in out.out and "skipping the temperature plot" in out.err
    assert (tmp_path / "emb.npz").is_file()


def test_eval_cli_reads_a_data_file(tmp_path):
    model_dir = build_tiny(tmp_path / "model", seed=0)
    path = tmp_path / "eval.jsonl"
    rows = [{"query": "a red circle", "positive": "red", "negatives": ["blue"]}] * 2
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = _eval_parser().parse_args(
        ["eval", str(model_dir), "--data", str(path), "--limit", "1", "--output", str(tmp_path / "r.json")]
    )
    assert args.func(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_queries"] == 1 and report["num_documents"] == 2


def test_eval_cli_reports_a_bad_data_spec_in_one_line(tmp_path, capsys):
    """--data goes through e5omni.data.specs.load_data_spec; what it refuses is one line and status 2, before any
    model is loaded (the model folder here does not exist)."""
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / "empty.jsonl").write_text("")
    cases = {
        "synthetic:dev": "unknown synthetic split 'dev'",
        str(tmp_path / "missing.jsonl"): "data file not found",
        str(tmp_path / "data.txt"): "unsupported data file",
        str(tmp_path / "empty.jsonl"): "has no examples",
    }
    parser = _eval_parser()
    for spec, message in cases.items():
        args = parser.parse_args(["eval", str(tmp_path / "no-model"), "--data", spec])
        assert args.func(args) == 2, spec
        err = capsys.readouterr().err
        assert err.startswith("e5omni eval: ") and message in err and err.count("\n") == 1, err


def test_eval_plots_find_the_training_log_in_the_runs_output_dir(tmp_path, capsys):
    """Defect 6: `e5omni train --release_dir R` writes trainer_state.json into its --output_dir, not into R; eval
    takes that folder with --trainer-state and draws the temperatures; a wrong one fails before encoding."""
    release = build_tiny(tmp_path / "runs" / "release", seed=0)
    output_dir = tmp_path / "demo-output" / "checkpoints"
    output_dir.mkdir(parents=True)
    log = [
        {"step": s, "tau_text": 0.02 - s * 1e-4, "tau_image": 0.02, "tau_audio": 0.021, "tau_video": 0.019}
        for s in (1, 2, 3)
    ]
    (output_dir / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    common = ["eval", str(release), "--data", "synthetic:test", "--limit", "12", "--plots", str(tmp_path / "plots")]
    args = _eval_parser().parse_args([*common, "--trainer-state", str(output_dir)])
    assert args.func(args) == 0
    assert (tmp_path / "plots" / "temperatures.png").is_file()
    args = _eval_parser().parse_args([*common, "--trainer-state", str(tmp_path / "nowhere")])
    args.model = str(tmp_path / "no-such-model")  # never loaded: the log is checked first
    assert args.func(args) == 2
    assert "--trainer-state" in capsys.readouterr().err
    args = _eval_parser().parse_args(common)
    assert args.func(args) == 0
    assert "not into --release_dir; pass --trainer-state" in capsys.readouterr().err


def test_eval_cli_truncate_dim_scores_the_truncated_vectors(tmp_path, capsys):
    """`e5omni eval --truncate-dim D`: the metrics are those of encode(truncate_dim=D)'s vectors (one encoding pass,
    then cut and re-normalised); a dimension over the model's is exit 2; an untrained one (the model records
    Matryoshka dims) warns."""
    from transformers import AutoModel

    from e5omni.data.specs import load_data_spec as load_spec

    model_dir = build_tiny(tmp_path / "model", seed=0)
    base = ["eval", str(model_dir), "--data", "synthetic:test", "--limit", "18", "--batch-size", "8"]
    args = _eval_parser().parse_args(base + ["--truncate-dim", "8", "--output", str(tmp_path / "r8.json")])
    assert args.func(args) == 0
    got = json.loads((tmp_path / "r8.json").read_text())["metrics"]
    model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    corpus = to_corpus(load_spec("synthetic:test", split="test", limit=18))
    full = encode_corpus(model, corpus, batch_size=8)
    want = evaluate_retrieval(model, corpus, embeddings=full.truncated(8))
    assert got["overall"]["mrr"] == pytest.approx(want["overall"]["mrr"], abs=1e-6)
    qids = full.query_ids[:3]
    queries = model.encode_query([corpus.queries[q] for q in qids], truncate_dim=8).numpy()
    assert np.abs(full.truncated(8).queries(qids) - queries).max() < 1e-5
    args = _eval_parser().parse_args(base + ["--truncate-dim", "4096"])
    assert args.func(args) == 2 and "over the model's" in capsys.readouterr().err
    config = json.loads((model_dir / "config.json").read_text())
    config["matryoshka_dimensions"] = [model.config.hidden_size, 32]  # as a Matryoshka run records them
    (model_dir / "config.json").write_text(json.dumps(config))
    args = _eval_parser().parse_args(base + ["--truncate-dim", "8"])
    with pytest.warns(UserWarning, match="truncate_dim=8: this model was trained"):
        assert args.func(args) == 0
