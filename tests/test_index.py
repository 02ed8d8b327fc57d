"""`e5omni index` / `e5omni search`: a salted folder, kill -9 and resume, search against brute force, mismatches."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

from e5omni.index import CorpusIndex, IndexBuildError, IndexMismatchError, build_corpus, read_manifest
from e5omni.index.search import read_shards
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model
from tests.cli_runs import REPO, env
from tests.helpers import kill_9_after_shards, salted_folder, text_corpus

pytest.importorskip("faiss", reason="faiss-cpu comes with the [index] extra")


@pytest.fixture(scope="module")
def model():
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    return model


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return save_hub_folder(model, model.processor, tmp_path_factory.mktemp("index-model") / "m")


def test_a_salted_folder_embeds_everything_else_and_records_each_bad_file(model, tmp_path):
    folder, good, bad = salted_folder(tmp_path)
    out = tmp_path / "index"
    summary = build_corpus(model, folder, out, shard_size=4, batch_size=3, show_progress_bar=False)
    assert (summary.embedded, summary.failed) == (len(good), len(bad))
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["id"] for e in errors} == bad
    reasons = {e["id"]: (e["error"], e["message"]) for e in errors}
    assert reasons["bomb.png"][0] == "MediaTooLargeError"
    assert reasons["escape.txt"][0] == "UnsafeMediaPathError" and "outside" in reasons["escape.txt"][1]
    assert reasons["pipe.wav"][0] == "UnsafeMediaPathError" and "regular file" in reasons["pipe.wav"][1]
    assert reasons["corrupt.png"][0] == reasons["truncated.mp4"][0] == "MediaDecodeError"
    assert not any(e["message"].startswith("item ") for e in errors)  # batch positions mean nothing here
    rows, vectors = read_shards(out)
    assert sorted(r["id"] for r in rows) == sorted(good)
    # the stored vectors are exactly what encode_document gives for the same items
    items = [(folder / r["id"]).read_text() if r["id"].endswith(".txt") else None for r in rows]
    for row, vector, text in zip(rows, vectors, items, strict=True):
        kind = row["modalities"][0]
        item = text if text is not None else {kind: str((folder / row["id"]).resolve())}
        assert np.abs(model.encode_document([item])[0].numpy() - vector).max() < 1e-5, row["id"]
    manifest = read_manifest(out)
    assert manifest["finished"] and manifest["counts"] == {"embedded": 7, "failed": 5, "warned": 0, "shards": 3}
    assert (out / "warnings.jsonl").read_text() == ""
    assert manifest["contract"]["dimension"] == model.config.hidden_size


def test_an_existing_index_is_not_overwritten_without_resume(model, tmp_path):
    folder, _, _ = salted_folder(tmp_path)
    build_corpus(model, folder, tmp_path / "i", show_progress_bar=False)
    with pytest.raises(IndexBuildError, match="resume"):
        build_corpus(model, folder, tmp_path / "i", show_progress_bar=False)


def test_worker_processes_give_the_same_index(model, tmp_path):
    """`num_workers=2`: decoding in two DataLoader worker processes, overlapped with the forward; the same rows,
    vectors and errors file as the in-process run (the bad files still recorded, none lost)."""
    folder, good, bad = salted_folder(tmp_path)
    kwargs = {"shard_size": 5, "batch_size": 2, "show_progress_bar": False}
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    build_corpus(model, folder, serial, **kwargs)
    summary = build_corpus(model, folder, parallel, num_workers=2, **kwargs)
    assert (summary.embedded, summary.failed) == (len(good), len(bad))
    rows_a, vectors_a = read_shards(serial)
    rows_b, vectors_b = read_shards(parallel)
    assert rows_a == rows_b and np.array_equal(vectors_a, vectors_b)
    assert (serial / "errors.jsonl").read_text() == (parallel / "errors.jsonl").read_text()
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        build_corpus(model, folder, tmp_path / "x", num_workers=-1, show_progress_bar=False)
    with pytest.raises(ValueError, match="num_workers is for the local engine"):
        build_corpus(model, folder, tmp_path / "y", engine="ray", model_path="m", num_workers=2)


def test_items_embedded_with_warnings_are_recorded_not_printed(model, tmp_path):
    """Audio cut at max_audio_seconds and text cut at max_length are embedded and listed in warnings.jsonl (id, the
    reason without a batch position), counted in the summary; nothing floods the terminal; resume keeps them."""
    import warnings as pywarnings

    folder = tmp_path / "corpus"
    folder.mkdir()
    t = np.arange(int(16000 * (model.config.max_audio_seconds + 1))) / 16000
    sf.write(folder / "long.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    (folder / "long.txt").write_text("word " * (model.config.max_length * 2))
    (folder / "short.txt").write_text("a short caption")
    out = tmp_path / "i"
    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        summary = build_corpus(model, folder, out, shard_size=2, batch_size=2, show_progress_bar=False)
    assert not [w for w in caught if "item " in str(w.message)], [str(w.message) for w in caught]
    assert (summary.embedded, summary.failed, summary.warned) == (3, 0, 2)
    lines = [json.loads(line) for line in (out / "warnings.jsonl").read_text().splitlines()]
    assert [(e["id"], e["shard"]) for e in lines] == [("long.txt", 0), ("long.wav", 0)]
    assert "max_length" in lines[0]["warning"] and "max_audio_seconds" in lines[1]["warning"]
    assert not any(e["warning"].startswith("item ") for e in lines)
    parallel = tmp_path / "p"
    build_corpus(model, folder, parallel, shard_size=2, batch_size=2, show_progress_bar=False, num_workers=2)
    assert (parallel / "warnings.jsonl").read_text() == (out / "warnings.jsonl").read_text()
    # an interrupted second shard: its lines are dropped and redone, the first shard's stay
    manifest = read_manifest(out)
    manifest["shards"], manifest["finished"] = manifest["shards"][:1], False
    (out / "manifest.json").write_text(json.dumps(manifest))
    resumed = build_corpus(model, folder, out, shard_size=2, batch_size=2, show_progress_bar=False, resume=True)
    assert resumed.warned == 2 and (out / "warnings.jsonl").read_text() == (parallel / "warnings.jsonl").read_text()


def test_kill_9_mid_run_then_resume_holds_every_id_once_with_the_same_vectors(model, model_dir, tmp_path):
    folder = text_corpus(tmp_path, 60)
    reference = tmp_path / "reference"
    build_corpus(model, folder, reference, shard_size=4, batch_size=4, show_progress_bar=False)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "e5omni.cli", "index", str(model_dir), str(folder), "--out", str(killed)]
    cmd += ["--shard-size", "4", "--batch-size", "4", "--no-progress"]
    assert kill_9_after_shards(cmd, killed, 3, 240) < 16, "the run finished before it could be killed"
    resumed = subprocess.run(cmd + ["--resume"], env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1, resumed.stderr[-2000:]  # one broken file: exit 1, the rest embedded
    rows, vectors = read_shards(killed)
    ref_rows, ref_vectors = read_shards(reference)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 60 and ids == [r["id"] for r in ref_rows]
    assert np.abs(vectors - ref_vectors).max() < 1e-5
    errors = [json.loads(line)["id"] for line in (killed / "errors.jsonl").read_text().splitlines()]
    assert errors == ["000-broken.txt"]
    assert json.loads(resumed.stdout)["failed"] == 1


def test_search_matches_brute_force_and_reports_calibrated_scores(model, tmp_path):
    folder, good, _ = salted_folder(tmp_path)
    out = tmp_path / "index"
    build_corpus(model, folder, out, show_progress_bar=False)
    index = CorpusIndex.build(out)
    rows, vectors = read_shards(out)
    query = "a red square on the left"
    results = index.search(model, query, k=5, calibrated=True)
    brute = vectors @ model.encode_query([query])[0].numpy()
    order = np.argsort(-brute)[:5]
    assert [r.id for r in results] == [rows[i]["id"] for i in order]
    assert np.allclose([r.score for r in results], brute[order], atol=1e-5)
    first = results[0]
    doc_mask = [first.modalities]
    tau = model.pair_temperature(
        torch.tensor([[True, False, False, False]]),
        torch.tensor([[m in doc_mask[0] for m in ("text", "image", "audio", "video")]]),
    )[0, 0].item()
    assert first.calibrated == pytest.approx(first.score / tau, rel=1e-5)
    loaded = CorpusIndex.load(out)
    assert [r.id for r in loaded.search(model, query, k=5)] == [r.id for r in results]
    mixed = loaded.search(model, {"text": "this picture", "image": str(folder / "img1.png")}, k=1)
    assert mixed and mixed[0].id == "img1.png"


def test_search_with_another_model_or_dimension_fails_clearly(model, tmp_path):
    folder = text_corpus(tmp_path, 5)
    build_corpus(model, folder, tmp_path / "i", show_progress_bar=False)
    index = CorpusIndex.build(tmp_path / "i")
    other, processor = build_tiny_model("qwen2.5-omni", seed=1)
    other.set_processor(processor)
    with pytest.raises(IndexMismatchError, match="another model"):
        index.search(other, "a red shape")
    with pytest.raises(IndexBuildError, match="another model"):
        build_corpus(other, folder, tmp_path / "i", resume=True, show_progress_bar=False)


def test_matryoshka_hnsw_and_add(model, tmp_path):
    folder = text_corpus(tmp_path, 12)
    out = tmp_path / "i"
    build_corpus(model, folder, out, truncate_dim=16, show_progress_bar=False)
    index = CorpusIndex.build(out, kind="hnsw")
    rows, vectors = read_shards(out)
    assert vectors.shape[1] == 16 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    results = index.search(model, "document number 4: a blue shape", k=3)
    assert results[0].id == "004.txt"
    index.add(model, ["a brand new purple shape"], ["new"])
    assert index.search(model, "a brand new purple shape", k=1)[0].id == "new"


def test_ivf_presets_find_the_exact_neighbours_of_clustered_vectors():
    """The large-corpus presets on clustered unit vectors (the shape benchmarks/search_ann.py measures at 200k x 3584):
    `ivf` scans full vectors in 16 of its lists, `ivfpq` compresses to D / 8 bytes; both trained on a sample."""
    from e5omni.index.search import TRAIN_PER_LIST, make_index, pq_subquantizers, train_index

    assert (pq_subquantizers(3584), pq_subquantizers(64), pq_subquantizers(100), pq_subquantizers(7)) == (448, 8, 10, 1)
    rng = np.random.default_rng(0)
    dim, n = 64, 6000
    centres = rng.standard_normal((60, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 60, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.05 * rng.standard_normal((50, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recalls = {}
    for kind in ("ivf", "ivfpq"):
        index = make_index(kind, dim, n)
        assert index.nlist == 153 and not index.is_trained  # 4 sqrt(6000) lists, at most 6000 / 39
        assert TRAIN_PER_LIST * index.nlist > n  # the whole set trains here; a sample above 64 x nlist
        train_index(index, vectors, kind)
        index.add(vectors)
        _, found = index.search(queries, 10)
        recalls[kind] = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    # ivf is exact within its lists; ivfpq is lossy (0.44 measured here, chance is 0.002)
    assert recalls["ivf"] >= 0.95 and recalls["ivfpq"] >= 0.3, recalls
    small = make_index("ivf", dim, 40)
    with pytest.raises(ValueError, match="at least 39 vectors"):
        train_index(small, vectors[:20], "ivf")
    sampled = vectors[: TRAIN_PER_LIST * 2]  # more than 64 x nlist of a 2-list index: a sample trains it
    two = make_index("ivf", dim, 80)
    assert two.nlist == 2
    train_index(two, sampled, "ivf")
    assert two.is_trained


def test_ivf_kind_builds_saves_and_loads(model, tmp_path):
    folder = text_corpus(tmp_path, 45)
    out = tmp_path / "i"
    build_corpus(model, folder, out, show_progress_bar=False)
    exact = [(r.id, r.score) for r in CorpusIndex.build(out, kind="flat").search(model, "a red shape", k=5)]
    index = CorpusIndex.build(out, kind="ivf")
    loaded = CorpusIndex.load(out)
    assert loaded.kind == "ivf" and loaded.index.ntotal == index.index.ntotal == 45
    assert loaded.index.nlist == 1  # 45 vectors: one list (faiss wants 39 a list), so the search is exact
    found = [(r.id, r.score) for r in loaded.search(model, "a red shape", k=5)]
    assert [i for i, _ in found] == [i for i, _ in exact] and np.allclose([s for _, s in found], [s for _, s in exact])
    assert [r.id for r in loaded.search(model, "a red shape", k=5, nprobe=1)] == [i for i, _ in exact]
    with pytest.raises(ValueError, match=r"nprobe must be an integer in \[1, 1\]"):
        loaded.search(model, "a red shape", nprobe=2)
    with pytest.raises(ValueError, match="nprobe is for the ivf and ivfpq kinds; this index is flat"):
        CorpusIndex.build(out, kind="flat").search(model, "a red shape", nprobe=1)
    with pytest.raises(ValueError, match="ivfpq needs at least 256 vectors to train, the corpus has 45: use flat"):
        CorpusIndex.build(out, kind="ivfpq")


def test_ivfpq_reranks_its_candidates_with_the_exact_vectors(model, tmp_path):
    """ivfpq's codes pick 10 x k candidates, the memory-mapped exact store ranks them: the results of the exact
    index, with exact cosines; added rows join the store on save; a missing store degrades with a warning."""
    folder = text_corpus(tmp_path, 300)
    out = tmp_path / "i"
    build_corpus(model, folder, out, show_progress_bar=False)
    queries = ["a red shape", "document number 17", "a green shape, number 250"]
    exact = CorpusIndex.build(out, kind="flat")
    expected = [[(r.id, r.score) for r in exact.search(model, q, k=5)] for q in queries]
    CorpusIndex.build(out, kind="ivfpq")
    assert (out / "exact.f32").stat().st_size == 300 * model.config.hidden_size * 4
    index = CorpusIndex.load(out)
    assert isinstance(index.exact, np.memmap)
    for query, want in zip(queries, expected, strict=True):
        got = [(r.id, r.score) for r in index.search(model, query, k=5)]
        assert [i for i, _ in got] == [i for i, _ in want], query
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5), query
    index.add(model, ["a brand new purple shape"], ["new"])
    assert index.search(model, "a brand new purple shape", k=1)[0].id == "new"  # before the save too
    index.save()
    reloaded = CorpusIndex.load(out)
    assert len(reloaded.exact) == 301 and reloaded.search(model, "a brand new purple shape", k=1)[0].id == "new"
    (out / "exact.f32").unlink()
    with pytest.warns(UserWarning, match="exact.f32 is missing or does not match index.faiss"):
        degraded = CorpusIndex.load(out)
    assert degraded.exact is None and len(degraded.search(model, "a red shape", k=5)) == 5
    CorpusIndex.build(out, kind="flat")
    assert not (out / "exact.f32").exists()  # other kinds keep no store


def test_table_sources_confine_paths_and_name_bad_rows(model, tmp_path):
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    rows = [
        {"id": "t1", "text": "hello"},
        {"id": "i1", "image": "red.png", "text": "a red picture"},
        {"id": "esc", "image": "../outside.png"},
        {"text": "no id"},
        {"id": "odd", "colour": "red"},
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    summary = build_corpus(model, path, tmp_path / "i", show_progress_bar=False)
    assert (summary.embedded, summary.failed) == (2, 4)
    errors = {e["id"]: e for e in map(json.loads, (tmp_path / "i" / "errors.jsonl").read_text().splitlines())}
    assert errors["esc"]["error"] == "UnsafeMediaPathError"
    assert "items.jsonl line 4" in errors and "items.jsonl line 6" in errors
    assert "unknown column" in errors["odd"]["message"]
    import pyarrow as pa

    pq.write_table(
        pa.table({"id": ["p1", "p2"], "text": ["parquet one", None], "image": [None, "red.png"]}),
        tmp_path / "items.parquet",
    )
    assert build_corpus(model, tmp_path / "items.parquet", tmp_path / "p", show_progress_bar=False).embedded == 2


def test_cli_index_then_search_table_and_json(model_dir, tmp_path):
    folder = text_corpus(tmp_path, 6)
    out = tmp_path / "i"
    run = subprocess.run(
        [sys.executable, "-m", "e5omni.cli", "index", str(model_dir), str(folder), "--out", str(out), "--no-progress"]
        + ["--index", "ivf", "--num-workers", "1"],
        env=env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "1 item(s) failed" in run.stderr, run.stderr[-2000:]
    # 6 vectors cannot train an ivf index: the run keeps its work and builds the exact index, saying so
    assert (
        "ivf needs at least 39 vectors to train, the corpus has 6: use flat; built a flat (exact) index" in run.stderr
    )
    assert CorpusIndex.load(out).kind == "flat"
    search = [sys.executable, "-m", "e5omni.cli", "search", str(out), "--text", "document number 2", "-k", "3"]
    table = subprocess.run(search + ["--calibrated"], env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    lines = table.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["rank", "score", "calibrated", "id"] and len(lines) == 4
    as_json = subprocess.run(search + ["--json"], env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    results = json.loads(as_json.stdout)
    assert [r["rank"] for r in results] == [1, 2, 3] and results[0]["id"] == lines[1].split()[3]


def test_hub_sources_load_a_dataset_and_name_bad_rows(model, tmp_path, monkeypatch):
    """`hub:NAME[:SPLIT]` through the real `datasets.load_dataset`, on a local dataset folder (no network)."""
    import datasets

    from e5omni.index import iter_source, parse_hub
    from e5omni.index.sources import count_source

    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string")})
    features["image"] = datasets.Image()
    ds = datasets.Dataset.from_dict(
        {
            "id": ["cap", "pic", "both", "empty"],
            "text": ["a red square", None, "a blue picture", None],
            "image": [None, Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255)), None],
        },
        features=features,
    )
    (tmp_path / "ds" / "data").mkdir(parents=True)
    ds.to_parquet(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    name = str(tmp_path / "ds")
    assert parse_hub(f"hub:{name}") == (name, "train") and parse_hub("hub:org/set:test[:10]") == (
        "org/set",
        "test[:10]",
    )
    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    summary = build_corpus(model, f"hub:{name}:train", tmp_path / "i", shard_size=2, show_progress_bar=True)
    assert calls[0][0] == (name,) and calls[0][1]["split"] == "train"
    assert (summary.embedded, summary.failed) == (3, 1)
    rows, vectors = read_shards(tmp_path / "i")
    assert [(r["id"], r["modalities"]) for r in rows] == [
        ("cap", ["text"]),
        ("pic", ["image"]),
        ("both", ["text", "image"]),
    ]
    assert np.abs(vectors[0] - model.encode_document(["a red square"])[0].numpy()).max() < 1e-5
    (error,) = map(json.loads, (tmp_path / "i" / "errors.jsonl").read_text().splitlines())
    assert error["id"] == "empty" and error["error"] == "BadRowError" and "row 3" in error["source"]
    # the page finds the corpus from the manifest: texts shown, a decoded image has no file to serve
    from e5omni.app.media import MediaStore, corpus_source
    from e5omni.index import read_manifest

    source, root = corpus_source(read_manifest(tmp_path / "i"))
    assert source == f"hub:{name}:train" and root is None
    store = MediaStore.from_index(rows, source, root)
    assert [(e.id, e.text, e.files) for e in store.entries] == [
        ("cap", "a red square", {}),
        ("pic", None, {}),
        ("both", "a blue picture", {}),
    ]
    # a split expression, and the row number as the id of a dataset without an id column
    records = list(iter_source(f"hub:{name}:train[:2]"))
    assert [r.id for r in records] == ["cap", "pic"] and count_source(f"hub:{name}:train[:2]") == 2
    ds.remove_columns("id").to_parquet(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    assert [r.id for r in iter_source(f"hub:{name}")] == ["0", "1", "2", "3"]
    ds.remove_columns(["text", "image"]).to_parquet(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="no text, image, audio, video column"):
        list(iter_source(f"hub:{name}"))


def test_hub_source_reads_a_save_to_disk_folder_of_one_dataset(model, tmp_path):
    """`hub:FOLDER` where FOLDER is `Dataset.save_to_disk` output (not a DatasetDict, no split in the spec)."""
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "text": ["a red square", "a blue circle"]})
    ds.save_to_disk(str(tmp_path / "saved"))
    summary = build_corpus(model, f"hub:{tmp_path / 'saved'}", tmp_path / "i", shard_size=4)
    assert (summary.embedded, summary.failed) == (2, 0)
    rows, vectors = read_shards(tmp_path / "i")
    assert [r["id"] for r in rows] == ["a", "b"]
    assert np.abs(vectors[1] - model.encode_document(["a blue circle"])[0].numpy()).max() < 1e-5


def test_index_warns_when_truncating_to_a_dimension_the_model_was_not_trained_for(model, tmp_path):
    """A Matryoshka-trained model records its dims: --truncate-dim outside them warns (never refuses); a trained one
    does not."""
    import warnings

    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.txt").write_text("a red square")
    saved = model.config.matryoshka_dimensions
    model.config.matryoshka_dimensions = [model.config.hidden_size, 32]
    try:
        with pytest.warns(UserWarning, match="truncate_dim=16: this model was trained"):
            build_corpus(model, folder, tmp_path / "i16", truncate_dim=16)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            build_corpus(model, folder, tmp_path / "i32", truncate_dim=32)
    finally:
        model.config.matryoshka_dimensions = saved
