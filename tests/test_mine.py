"""`e5omni mine`: the false-negative rules (each planted case removed and counted), output that reloads as the same
examples, bad items recorded and skipped, resume after a kill, a corpus index as the pool, both engines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e5omni.data.items import content_hash
from e5omni.data.specs import load_data_spec
from e5omni.mine import (
    RULES,
    Candidate,
    ContentKeys,
    MediaOutsideOutputError,
    MineError,
    MineRules,
    UnwritableItemError,
    mine,
    select_negatives,
    side_paths,
)
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model
from tests.cli_runs import REPO, env

pytest.importorskip("faiss", reason="faiss-cpu comes with the [index] extra")


@pytest.fixture(scope="module")
def model():
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    return model


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return save_hub_folder(model, model.processor, tmp_path_factory.mktemp("mine-model") / "m")


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------ the rules alone
def test_each_rule_removes_its_planted_false_negative_and_counts_it():
    """Candidates in rank order, one planted per rule; what is left is the true negatives, in order."""
    positive_score = 0.80
    c = Candidate  # row, score, hash, key, modalities
    planted = [
        c(0, 0.99, 10, 10, ("text",)),  # the query itself
        c(1, 0.95, 20, 20, ("image",)),  # the positive (same content hash, any id)
        c(2, 0.94, 21, 200, ("image",)),  # a file copy of the positive: another path (hash), the same bytes (key)
        c(3, 0.93, 30, 30, ("image",)),  # another positive of the same query
        c(4, 0.92, 31, 301, ("image",)),  # ... a file copy of it
        c(5, 0.91, 41, 41, ("text",)),  # another modality than the positive (same_modality)
        c(6, 0.85, 50, 50, ("image",)),  # above the positive: within the absolute margin 0.1
        c(7, 0.74, 51, 51, ("image",)),  # 0.74 + 0.1 > 0.80: absolute margin
        c(8, 0.69, 52, 52, ("image",)),  # 0.69 > 0.80 - 0.8 * 0.15 = 0.68: relative margin
        c(9, 0.66, 53, 53, ("image",)),  # the first true negative left: skipped by range_min = 1
        c(10, 0.65, 54, 54, ("image",)),  # kept
        c(11, 0.64, 54, 54, ("image",)),  # the same content as a kept negative (a corpus copy): repeated
        c(12, 0.63, 55, 55, ("image",)),  # kept
        c(13, 0.62, 56, 56, ("image",)),  # in the window, not needed (num_negatives = 2)
        c(14, 0.61, 57, 57, ("image",)),  # beyond range_max = 4 survivors
        c(15, 0.05, 58, 58, ("image",)),  # below min_score
    ]
    rules = MineRules(
        num_negatives=2, range_min=1, range_max=4, absolute_margin=0.1, relative_margin=0.15, min_score=0.1,
        same_modality=True,
    )  # fmt: skip
    chosen, removed = select_negatives(
        planted,
        rules=rules,
        query_hash=10,
        positive_hash=20,
        positive_key=200,
        query_positive_hashes={20, 30, 31},
        query_positive_keys={200, 30, 301},
        positive_modalities=("image",),
        positive_score=positive_score,
        range_max=4,
    )
    assert [x.row for x in chosen] == [10, 12]
    assert dict(removed) == {
        "query_itself": 1,
        "positive": 1,
        "positive_duplicate": 1,
        "query_positive": 2,
        "modality": 1,
        "absolute_margin": 2,
        "relative_margin": 1,
        "repeated": 1,
        "min_score": 1,
        "range_min": 1,
        "range_max": 1,
    }
    # max_score on its own, and range_max counting what lies beyond the window
    chosen, removed = select_negatives(
        planted[9:15],
        rules=MineRules(num_negatives=1, max_score=0.655, range_max=2),
        query_hash=10,
        positive_hash=20,
        positive_key=200,
        query_positive_hashes={20},
        query_positive_keys={200},
        positive_modalities=("image",),
        positive_score=positive_score,
        range_max=2,
    )
    assert [x.row for x in chosen] == [10] and removed["max_score"] == 1 and removed["range_max"] == 2


def test_rules_are_checked_with_typed_errors():
    with pytest.raises(MineError, match="cannot take 3 negatives from ranks \\[2, 4\\)"):
        MineRules(num_negatives=3, range_min=2, range_max=4).check()
    with pytest.raises(MineError, match="num_negatives must be an integer >= 1"):
        MineRules(num_negatives=0).check()
    with pytest.raises(MineError, match="min_score 0.9 is above max_score 0.5"):
        MineRules(min_score=0.9, max_score=0.5).check()
    # sentence-transformers' default window: room for the positives, and 10 x when a score rule may remove some
    assert MineRules(num_negatives=2).resolved_range_max(3) == 5
    assert MineRules(num_negatives=2, relative_margin=0.05).resolved_range_max(1) == 21


def test_content_keys_see_a_copied_file_as_the_same_content(tmp_path):
    _image(0).save(tmp_path / "a.png")
    shutil.copy(tmp_path / "a.png", tmp_path / "copy.png")
    _image(1).save(tmp_path / "b.png")
    keys = ContentKeys()
    a, copy, b = ({"image": str(tmp_path / n)} for n in ("a.png", "copy.png", "b.png"))
    assert content_hash(a) != content_hash(copy)  # content_hash compares paths
    assert keys(a) == keys(copy) != keys(b)
    assert keys({"text": "x", **a}) == keys({"text": "x", **copy}) != keys({"text": "y", **a})
    assert keys("plain text") == content_hash("plain text")


# ------------------------------------------------------------------------------------------------ end to end
def _planted_dataset(root: Path) -> Path:
    """Captions -> images, with the false negatives of the issue planted in the data's own pool: img/0.png copied as
    img/copy0.png (another example's positive), and the query of example 0 given a second positive (img/extra.png)."""
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(10):
        _image(i).save(root / "img" / f"{i}.png")
        rows.append({"query": f"caption number {i}", "positive": {"image": f"img/{i}.png"}, "id": f"ex{i}"})
    shutil.copy(root / "img" / "0.png", root / "img" / "copy0.png")
    rows.append({"query": "a caption of the copy", "positive": {"image": "img/copy0.png"}, "id": "copy"})
    _image(99).save(root / "img" / "extra.png")
    rows.append({"query": "caption number 0", "positive": {"image": "img/extra.png"}, "id": "ex0-second"})
    rows.append({"query": "a text pair", "positive": "a text document", "pair": "text->text", "id": "text"})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _written(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_mining_never_returns_a_positive_of_the_query_or_a_copy_of_one(model, tmp_path):
    data = _planted_dataset(tmp_path / "d")
    examples = load_data_spec(str(data))
    out = tmp_path / "d" / "mined.jsonl"
    # a window as wide as the pool: every planted false negative is retrieved for the queries it concerns
    summary = mine(model, examples, out, rules=MineRules(num_negatives=3, range_max=12), show_progress_bar=False)
    assert summary.written == len(examples) and summary.errors == 0
    mined = _written(out)
    by_id = {row["id"]: row for row in mined}
    same_bytes = {"img/0.png", "img/copy0.png"}
    for row in mined:
        assert len(row["negatives"]) == 3
        assert row["positive"] not in row["negatives"]
        if row["id"] in ("ex0", "copy"):
            assert not same_bytes & {n.get("image") for n in row["negatives"] if isinstance(n, dict)}
        if row["query"] == "caption number 0":  # one query, two positives: neither is its negative
            assert not {"img/0.png", "img/extra.png", "img/copy0.png"} & {
                n.get("image") for n in row["negatives"] if isinstance(n, dict)
            }
    removed = summary.as_dict()["removed"]
    assert removed["positive"] == len(examples)  # the pool holds every positive: each was retrieved and removed
    assert removed["positive_duplicate"] == 2  # ex0 -> copy0.png, copy -> 0.png (the same bytes)
    assert removed["query_positive"] == 3  # ex0 -> extra.png; ex0-second -> 0.png and its copy
    assert by_id["text"]["pair"] == "text->text"
    # the summary on disk is what was returned, and the file reloads as the same examples with the same media
    assert json.loads(side_paths(out)["summary"].read_text())["removed"] == removed
    reloaded = load_data_spec(str(out))
    assert [r["positive"] for r in reloaded] == [e["positive"] for e in examples]
    assert [r["query"] for r in reloaded] == [e["query"] for e in examples]


def test_score_rules_on_real_scores_leave_no_negative_above_them(model, tmp_path):
    data = _planted_dataset(tmp_path / "d")
    examples = load_data_spec(str(data))
    queries = model.encode_query([e["query"] for e in examples], show_progress_bar=False).numpy()
    positives = model.encode_document([e["positive"] for e in examples], show_progress_bar=False).numpy()
    scores = queries @ positives.T
    max_score = float(np.median(scores))
    out = tmp_path / "d" / "mined.jsonl"
    rules = MineRules(num_negatives=1, max_score=max_score, range_max=12)
    summary = mine(model, examples, out, rules=rules, show_progress_bar=False)
    assert summary.removed["max_score"] > 0
    for row in _written(out):
        i = next(k for k, e in enumerate(examples) if e.get("id") == row["id"])
        j = [k for k, e in enumerate(examples) if _same_item(e["positive"], row["negatives"][0], out.parent)][0]
        assert scores[i, j] <= max_score + 1e-4
    # a too-tight rule leaves examples without negatives: each one recorded with the counts, the rest written
    strict = tmp_path / "d" / "strict.jsonl"
    summary = mine(model, examples, strict, rules=MineRules(max_score=-1.0, range_max=12), show_progress_bar=False)
    assert summary.written == 0 and summary.errors_by_type == {"TooFewNegatives": len(examples)}
    first = json.loads(side_paths(strict)["errors"].read_text().splitlines()[0])
    assert first["index"] == 0 and first["id"] == "ex0" and "max_score" in first["message"]


def _same_item(item, written, root: Path) -> bool:
    if isinstance(item, str):
        return item == written
    return isinstance(written, dict) and str((root / written["image"]).resolve()) == item.get("image")


def test_in_memory_media_are_written_once_and_reload_to_the_same_embeddings(model, tmp_path):
    from e5omni.data.synthetic import build_synthetic

    examples = build_synthetic("train", n=18, seed=0, num_negatives=0)  # every pair twice: image, audio, video
    out = tmp_path / "synthetic.jsonl"
    summary = mine(model, examples, out, chunk_size=5, show_progress_bar=False)
    assert summary.written == 18
    reloaded = load_data_spec(str(out))
    for role in ("query", "positive"):
        before = model.encode_document([e[role] for e in examples], show_progress_bar=False)
        after = model.encode_document([r[role] for r in reloaded], show_progress_bar=False)
        assert (before - after).abs().max() < 1e-5, role
    media = side_paths(out)["media"]
    kinds = {p.parent.name for p in media.rglob("*.*")}
    assert kinds == {"image", "audio", "video"} and not list(media.rglob("*.tmp*"))
    # every negative is another example's positive (the default pool), written by its content once
    positives = {json.dumps(r["positive"], sort_keys=True) for r in reloaded}
    assert all(json.dumps(n, sort_keys=True) in positives for r in reloaded for n in r["negatives"])


def test_same_modality_retrieves_deeper_until_the_window_is_filled(model, tmp_path):
    from e5omni.data.items import modality_signature
    from e5omni.data.synthetic import build_synthetic

    examples = build_synthetic("train", n=45, seed=0, num_negatives=0)  # 9 pairs, 5 kinds of document
    out = tmp_path / "mined.jsonl"
    rules = MineRules(num_negatives=2, same_modality=True)
    summary = mine(model, examples, out, rules=rules, show_progress_bar=False)
    # the first 5 candidates of a query are mostly documents of other modalities; a query retrieves more until
    # it has 2 of its positive's modalities
    assert summary.written == 45 and summary.removed["modality"] > 0
    for row in load_data_spec(str(out)):
        assert {modality_signature(n) for n in row["negatives"]} == {modality_signature(row["positive"])}
    capped = tmp_path / "capped.jsonl"
    summary = mine(model, examples, capped, rules=MineRules(2, same_modality=True, max_candidates=5))
    assert summary.written < 45 and summary.errors_by_type["TooFewNegatives"] == 45 - summary.written


def test_bad_items_are_recorded_and_the_rest_mined(model, tmp_path):
    root = tmp_path / "d"
    data = _planted_dataset(root)
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    lines = data.read_text().splitlines()
    lines.append(json.dumps({"query": "a broken picture", "positive": {"image": "img/corrupt.png"}, "id": "badpos"}))
    lines.append(json.dumps({"query": {"image": "img/corrupt.png"}, "positive": "some text", "id": "badq"}))
    data.write_text("\n".join(lines) + "\n")
    examples = load_data_spec(str(data))
    out = root / "mined.jsonl"
    summary = mine(model, examples, out, rules=MineRules(num_negatives=2), chunk_size=4, show_progress_bar=False)
    assert summary.written == len(examples) - 2 and summary.errors == 2
    errors = [json.loads(line) for line in side_paths(out)["errors"].read_text().splitlines()]
    assert [(e["id"], e["error"]) for e in errors] == [("badpos", "MediaDecodeError"), ("badq", "MediaDecodeError")]
    assert errors[0]["message"].startswith("positive: ") and errors[1]["message"].startswith("query: ")
    assert all("corrupt" not in line for line in out.read_text().splitlines())  # never offered as a negative


def test_media_outside_the_output_folder_are_refused_not_rewritten(model, tmp_path):
    data = _planted_dataset(tmp_path / "d")
    examples = load_data_spec(str(data))
    out = tmp_path / "elsewhere" / "mined.jsonl"
    out.parent.mkdir()
    # found on the first example, before anything is embedded: a JSON-lines file names media under its own folder
    with pytest.raises(
        MediaOutsideOutputError, match=r"example 0: positive.image: .*/d/img/0.png is outside .*/elsewhere"
    ):
        mine(model, examples, out, show_progress_bar=False)
    assert not side_paths(out)["work"].exists()
    # per item, later on: a negative from the pool that lies outside (here: every image positive)
    summary = mine(model, examples[-1:] + examples[:3], out, show_progress_bar=False, rules=MineRules(1))
    assert summary.written == 0 and summary.errors_by_type == {"MediaOutsideOutputError": 4}
    assert issubclass(MediaOutsideOutputError, UnwritableItemError)


def test_resume_redoes_only_the_unfinished_chunk_and_refuses_another_job(model, tmp_path):
    data = _planted_dataset(tmp_path / "d")
    examples = load_data_spec(str(data))
    reference = tmp_path / "d" / "reference.jsonl"
    mine(model, examples, reference, chunk_size=3, show_progress_bar=False)
    out = tmp_path / "d" / "mined.jsonl"
    mine(model, examples, out, chunk_size=3, show_progress_bar=False)
    chunks = side_paths(out)["work"] / "chunks"
    # as if killed while writing chunk 2: its marker and the final files never written, a temporary file left
    (chunks / "00002.json").unlink()
    (chunks / "00002.jsonl").write_text("half a line")
    (chunks / "00003.json").unlink()
    out.unlink()
    side_paths(out)["summary"].unlink()
    finished = (chunks / "00000.jsonl").stat().st_mtime_ns
    with pytest.raises(MineError, match="pass resume=True"):
        mine(model, examples, out, chunk_size=3, show_progress_bar=False)
    with pytest.raises(MineError, match="differs in \\['rules'\\]"):
        mine(model, examples, out, chunk_size=3, rules=MineRules(num_negatives=1), resume=True)
    summary = mine(model, examples, out, chunk_size=3, resume=True, show_progress_bar=False)
    assert out.read_text() == reference.read_text().replace("reference.media", "mined.media")
    assert (chunks / "00000.jsonl").stat().st_mtime_ns == finished
    assert summary.written == len(examples)
    assert json.loads(side_paths(out)["summary"].read_text())["removed"] == summary.as_dict()["removed"]


def _text_corpus(root: Path) -> Path:
    """A folder corpus for --corpus: the data's positive texts, one copied under another id, and distractors."""
    folder = root / "corpus"
    folder.mkdir(parents=True)
    for i in range(8):
        (folder / f"doc{i}.txt").write_text(f"document {i} about a {['red', 'blue'][i % 2]} shape")
    (folder / "doc0-again.txt").write_text("document 0 about a red shape")
    return folder


@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_corpus_index_is_the_pool_and_its_copies_of_the_positive_are_removed(model, model_dir, tmp_path, engine):
    from e5omni.index import CorpusIndex, build_corpus

    folder = _text_corpus(tmp_path)
    index_dir = tmp_path / "index"
    build_corpus(model, folder, index_dir, show_progress_bar=False)
    CorpusIndex.build(index_dir)
    examples = [
        {"query": f"query {i}", "positive": f"document {i} about a {['red', 'blue'][i % 2]} shape"} for i in range(4)
    ]  # noqa: E501
    out = tmp_path / "mined.jsonl"
    kwargs = {}
    if engine == "ray":  # the actors load the model from its folder: the driver embeds queries with the same one
        from e5omni.cli.common import load_inference_model

        model, kwargs = load_inference_model(str(model_dir)), {"model_path": str(model_dir)}
        build_corpus(model, folder, tmp_path / "index-ray", show_progress_bar=False)
        index_dir = tmp_path / "index-ray"
        CorpusIndex.build(index_dir)
    summary = mine(
        model, examples, out, corpus=index_dir, engine=engine, rules=MineRules(num_negatives=2, range_max=9),
        show_progress_bar=False, **kwargs,
    )  # fmt: skip
    assert summary.pool["kind"] == "corpus" and summary.pool["rows"] == 9
    assert summary.written == 4
    # example 0's positive is in the corpus twice (doc0 and doc0-again): both removed as the positive
    assert summary.removed["positive"] == 4 + 1
    for row, example in zip(_written(out), examples, strict=True):
        assert example["positive"] not in row["negatives"] and len(set(row["negatives"])) == 2
        assert all(n.startswith("document ") for n in row["negatives"])


def test_cli_module_mines_and_reports(model_dir, tmp_path):
    from e5omni.cli.mine import main

    data = _planted_dataset(tmp_path / "d")
    out = tmp_path / "d" / "mined.jsonl"
    assert main([str(model_dir), "--data", str(data), "--out", str(out), "--no-progress", "--range-max", "8"]) == 0
    assert len(_written(out)) == 13
    assert main([str(model_dir), "--data", str(data), "--out", str(out), "--no-progress"]) == 2  # in the way
    assert main([str(model_dir), "--data", str(data), "--out", str(out), "--ray-actors", "2"]) == 2


def _registered() -> bool:
    from e5omni.cli import build_parser

    try:
        build_parser().parse_args(["mine", "m", "--data", "d", "--out", "o.jsonl"])
    except SystemExit:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _registered(), reason="`mine` is not registered in e5omni.cli yet")
def test_python_m_e5omni_cli_mine(model_dir, tmp_path):
    data = _planted_dataset(tmp_path / "d")
    out = tmp_path / "d" / "mined.jsonl"
    cmd = [sys.executable, "-m", "e5omni.cli", "mine", str(model_dir), "--data", str(data), "--out", str(out)]
    run = subprocess.run(cmd + ["--no-progress"], env=env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["written"] == 13 and set(summary["removed"]) == set(RULES)
