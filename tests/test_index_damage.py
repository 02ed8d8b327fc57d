"""The corpus index on damaged sources and files (issue #20 parts 3-5, #21 defects 1 and 8).

Ordinary damage never stops `e5omni index` and is never lost: each bad item is a line in errors.jsonl with its reason.
A resume notices an edited source; damaged index files give typed errors naming the file; calibrated search scores use
the processor's modality mask (a video with sound is audio + video, as in training).
"""

from __future__ import annotations

import json
import os
import socket
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from e5omni.index import CorpusIndex, IndexBuildError, build_corpus, iter_source, read_manifest
from e5omni.index.build import IndexDamagedError, SourceChangedError
from e5omni.index.search import read_shards, verify_index
from e5omni.index.sources import MAX_ROW_BYTES, iter_table
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model

pytest.importorskip("faiss", reason="faiss-cpu comes with the [index] extra")

QUIET = {"show_progress_bar": False}


@pytest.fixture(scope="module")
def model():
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    return model


def _errors(out: Path) -> dict[str, dict]:
    return {e["id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}


def _deep_folder(parent: Path, depth: int = 18) -> str:
    """Nested folders whose full path is longer than PATH_MAX (4096): the OS itself refuses to list the deepest one
    (ENAMETOOLONG), even for root. Built with dir_fd so no call sees the long path. Returns the relative path of the
    first folder that cannot be listed... as the walker will name it."""
    fd = os.open(parent, os.O_RDONLY)
    names = []
    try:
        for _ in range(depth):
            name = "d" * 250
            os.mkdir(name, dir_fd=fd)
            names.append(name)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        handle = os.open("lost.txt", os.O_CREAT | os.O_WRONLY, dir_fd=fd)
        os.write(handle, b"a file the walk cannot reach")
        os.close(handle)
    finally:
        os.close(fd)
    return names


def test_a_damaged_folder_is_walked_to_the_end_with_every_problem_recorded(model, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "good.txt").write_text("a good caption")
    os.symlink("loop-b.txt", folder / "loop-a.txt")  # a symlink loop: pathlib raises RuntimeError on it
    os.symlink("loop-a.txt", folder / "loop-b.txt")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    name = os.fsdecode(b"caf\xe9.txt")  # a file name that is not UTF-8 (surrogate-escaped by Python)
    (folder / name).write_text("a file whose name is latin-1")
    (folder / "real").mkdir()
    (folder / "real" / "inside.txt").write_text("inside a linked folder")
    os.symlink("real", folder / "linked")  # a symlinked directory: not followed, recorded
    names = _deep_folder(folder / "real")
    out = tmp_path / "i"
    summary = build_corpus(model, folder, out, shard_size=3, batch_size=2, **QUIET)
    errors = _errors(out)
    kinds = {rid: e["error"] for rid, e in errors.items()}
    unlistable = [rid for rid, kind in kinds.items() if kind == "UnreadableDirectoryError"]
    assert len(unlistable) == 1 and unlistable[0].startswith("real/" + names[0])
    assert "cannot be listed" in errors[unlistable[0]]["message"]
    assert kinds["loop-a.txt"] == kinds["loop-b.txt"] == "SymlinkLoopError"
    assert kinds["latin1.txt"] == "BadEncodingError" and "not UTF-8" in errors["latin1.txt"]["message"]
    assert kinds["linked/"] == "SymlinkedDirectoryError"
    rows, vectors = read_shards(out)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"good.txt", "caf\\xe9.txt", "real/inside.txt"}
    # the undecodable name: shown readably, its bytes kept in hex, embedded like any file
    assert by_id["caf\\xe9.txt"]["raw_path"] == b"caf\xe9.txt".hex()
    text_vector = vectors[list(by_id).index("caf\\xe9.txt")]
    assert np.abs(model.encode_document(["a file whose name is latin-1"])[0].numpy() - text_vector).max() < 1e-5
    assert (summary.embedded, summary.failed) == (3, 5)
    manifest = read_manifest(out)
    assert manifest["finished"] and manifest["counts"]["failed"] == 5


def test_jsonl_rows_are_read_with_a_bounded_reader(model, tmp_path):
    """A 64 MB line is skipped in chunks (peak memory far below it), a latin-1 byte spoils only its row, and the
    rows after both are embedded."""
    path = tmp_path / "items.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"id": "a", "text": "first row"}\n')
        handle.write(b'{"id": "huge", "text": "' + b"x" * (64 << 20) + b'"}\n')
        handle.write('{"id": "latin", "text": "caf\xe9"}\n'.encode("latin-1"))
        handle.write(b'{"id": "b", "text": "last row"}\n')
    tracemalloc.start()
    records = list(iter_table(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * MAX_ROW_BYTES, peak  # the 64 MB line was never held
    assert [(r.id, r.error and r.error[0]) for r in records] == [
        ("a", None),
        ("items.jsonl line 2", "RowTooLargeError"),
        ("items.jsonl line 3", "BadEncodingError"),
        ("b", None),
    ]
    summary = build_corpus(model, path, tmp_path / "i", **QUIET)
    assert (summary.embedded, summary.failed) == (2, 2)
    assert "byte" in _errors(tmp_path / "i")["items.jsonl line 3"]["message"]


def test_csv_rows_with_huge_cells_or_bad_bytes_are_error_lines(model, tmp_path):
    path = tmp_path / "items.csv"
    lines = [
        b"id,text\n",
        b"a,first\n",
        b'big,"' + b"y" * 200_000 + b'"\n',  # a cell over csv's 128 KB field limit
        "latin,caf\xe9\n".encode("latin-1"),
        b'multi,"two\nlines"\n',
        b"over," + b"z" * (MAX_ROW_BYTES + 10) + b"\n",  # a line over the row cap: never read whole
        b"c,last\n",
    ]
    path.write_bytes(b"".join(lines))
    records = list(iter_table(path))
    assert [(r.id, r.error and r.error[0]) for r in records] == [
        ("a", None),
        ("items.csv line 3", "RowTooLargeError"),
        ("items.csv line 4", "BadEncodingError"),
        ("multi", None),
        ("items.csv line 7", "RowTooLargeError"),
        ("c", None),
    ]
    assert records[3].item == "two\nlines"
    assert "field larger than field limit" in records[1].error[1]
    summary = build_corpus(model, path, tmp_path / "i", **QUIET)
    assert (summary.embedded, summary.failed) == (3, 3)


def _corrupt_parquet(path: Path) -> None:
    """Three row groups of two rows; the text column's pages of the middle group overwritten with junk."""
    table = pa.table({"id": [f"r{i}" for i in range(6)], "text": [f"row number {i} " * 20 for i in range(6)]})
    pq.write_table(table, path, row_group_size=2, compression="snappy")
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(1).column(1)
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + column.total_compressed_size] = b"\xab" * column.total_compressed_size
    path.write_bytes(bytes(data))


def test_a_parquet_page_that_cannot_be_read_is_an_error_line_per_row(model, tmp_path):
    path = tmp_path / "items.parquet"
    _corrupt_parquet(path)
    records = list(iter_source(path))
    assert [r.id for r in records] == [f"r{i}" for i in range(6)]  # the ids of the damaged group still read
    assert [r.error[0] if r.error else None for r in records] == [None, None, *["CorruptTableError"] * 2, None, None]
    assert "row group 1" in records[2].error[1]
    summary = build_corpus(model, path, tmp_path / "i", **QUIET)
    assert (summary.embedded, summary.failed) == (4, 2)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(ValueError, match="junk.parquet: not a readable Parquet file"):
        list(iter_source(tmp_path / "junk.parquet"))


def test_duplicate_ids_in_a_table_keep_the_first_and_record_the_rest(model, tmp_path):
    path = tmp_path / "items.jsonl"
    rows = [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "three"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = build_corpus(model, path, tmp_path / "i", **QUIET)
    assert (summary.embedded, summary.failed) == (2, 1)
    error = _errors(tmp_path / "i")["items.jsonl line 3"]
    assert error["error"] == "DuplicateIdError" and "items.jsonl line 1" in error["message"]


def test_max_errors_is_validated(model, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("x")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_errors must be an integer >= 0"):
            build_corpus(model, tmp_path / "c", tmp_path / "i", max_errors=bad, **QUIET)
    assert not (tmp_path / "i").exists()  # nothing written for a refused run
    from e5omni.cli.index import non_negative_int

    assert non_negative_int("0") == 0
    with pytest.raises(Exception, match="integer >= 0"):
        non_negative_int("-3")


def _table(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))


def _interrupt(out: Path, shards: int) -> None:
    """What a kill -9 after `shards` finished shards leaves: the manifest lists only those (the rest redone)."""
    manifest = read_manifest(out)
    manifest["shards"], manifest["finished"] = manifest["shards"][:shards], False
    manifest.pop("counts")
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_resume_refuses_an_edited_source_and_rebuild_changed_brings_it_up_to_date(model, tmp_path):
    """The issue's scenario: a run stopped after 3 of 10 shards, then rows inserted (20), deleted (10) and edited
    before the resume. A plain resume is refused, saying what changed; --rebuild-changed gives every current row
    exactly once, with its current vector, and no deleted row."""
    path = tmp_path / "items.jsonl"
    original = [(f"doc{i:03d}", f"document {i} about {['cats', 'dogs', 'birds'][i % 3]}") for i in range(100)]
    _table(path, original)
    out = tmp_path / "i"
    kwargs = {"shard_size": 10, "batch_size": 5, **QUIET}
    build_corpus(model, path, out, **kwargs)
    _interrupt(out, 3)
    edited = [(f"new{i:02d}", f"an inserted row {i}") for i in range(20)]  # inserted before everything
    edited += [row for i, row in enumerate(original) if not 5 <= i < 15]  # 10 deleted inside the finished shards
    edited = [
        (rid, text + " (edited)") if rid in ("doc001", "doc020", "doc080") else (rid, text) for rid, text in edited
    ]
    _table(path, edited)
    with pytest.raises(SourceChangedError) as caught:
        build_corpus(model, path, out, resume=True, **kwargs)
    message = str(caught.value)
    assert "20 added ('new00', 'new01', 'new02' and 17 more)" in message
    assert "10 removed ('doc005', 'doc006', 'doc007' and 7 more)" in message
    assert "3 modified ('doc001', 'doc020', 'doc080')" in message
    assert "--resume --rebuild-changed" in message
    summary = build_corpus(model, path, out, resume=True, rebuild_changed=True, **kwargs)
    rows, vectors = read_shards(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) and set(ids) == {rid for rid, _ in edited}
    assert (summary.embedded, summary.failed) == (len(edited), 0)
    reference = tmp_path / "reference"
    build_corpus(model, path, reference, **kwargs)
    ref_rows, ref_vectors = read_shards(reference)
    ref = {r["id"]: v for r, v in zip(ref_rows, ref_vectors, strict=True)}
    assert max(np.abs(ref[r["id"]] - v).max() for r, v in zip(rows, vectors, strict=True)) < 1e-5
    manifest = read_manifest(out)
    assert manifest["layout"] == "by-id" and manifest["finished"] and manifest["counts"]["embedded"] == 110
    # the finished shards kept their unchanged rows (30 - 10 deleted - 2 edited = 18 not embedded again)
    kept_names = {f"{n:05d}.parquet" for n in range(3)}
    assert sum(s["rows"] for s in manifest["shards"] if s["name"] in kept_names) == 18
    assert verify_index(out) == []
    # resuming the brought-up-to-date index again: nothing changed, nothing to do, still each id once
    again = build_corpus(model, path, out, resume=True, **kwargs)
    assert again.embedded == 110 and [r["id"] for r in read_shards(out)[0]] == ids


def test_a_changed_folder_is_refused_with_what_changed(model, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.txt").write_text(f"text {i}")
    out = tmp_path / "i"
    build_corpus(model, folder, out, shard_size=2, **QUIET)
    _interrupt(out, 1)
    build_corpus(model, folder, out, shard_size=2, resume=True, **QUIET)  # unchanged: a plain resume works
    _interrupt(out, 1)
    (folder / "0.txt").unlink()
    (folder / "9.txt").write_text("a new file")
    os.utime(folder / "3.txt", ns=(1, 1))  # same bytes, other mtime: modified by the listing's rule
    with pytest.raises(SourceChangedError, match=r"1 added \('9.txt'\), 1 removed \('0.txt'\), 1 modified \('3.txt'\)"):
        build_corpus(model, folder, out, shard_size=2, resume=True, **QUIET)
    build_corpus(model, folder, out, shard_size=2, resume=True, rebuild_changed=True, **QUIET)
    assert sorted(r["id"] for r in read_shards(out)[0]) == ["1.txt", "2.txt", "3.txt", "4.txt", "5.txt", "9.txt"]


def test_a_torn_last_line_of_errors_jsonl_is_tolerated_on_resume(model, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(f"text {i}")
    (folder / "2-bad.txt").write_bytes(b"\xff\xfe")
    out = tmp_path / "i"
    build_corpus(model, folder, out, shard_size=2, **QUIET)
    reference = (out / "errors.jsonl").read_text()
    _interrupt(out, 1)
    with open(out / "errors.jsonl", "a") as handle:  # kill -9 while appending the next shard's line
        handle.write('{"id": "2-bad.txt", "source": "2-b')
    summary = build_corpus(model, folder, out, shard_size=2, resume=True, **QUIET)
    assert summary.failed == 1 and (out / "errors.jsonl").read_text() == reference
    (out / "errors.jsonl").write_text('not json\n{"id": "x", "shard": 0}\n')
    _interrupt(out, 1)
    with pytest.raises(IndexDamagedError, match="errors.jsonl line 1"):
        build_corpus(model, folder, out, shard_size=2, resume=True, **QUIET)


def test_damaged_index_files_give_typed_errors_naming_the_file(model, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.txt").write_text(f"a caption number {i}")
    out = tmp_path / "i"
    build_corpus(model, folder, out, shard_size=2, **QUIET)
    CorpusIndex.build(out)
    manifest = read_manifest(out)
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert set(manifest["search_index"]["sha256"]) == {"index.faiss", "rows.json"}
    assert verify_index(out) == []
    faiss_bytes = (out / "index.faiss").read_bytes()
    (out / "index.faiss").write_bytes(faiss_bytes[: len(faiss_bytes) // 2])  # truncated
    assert verify_index(out) == [
        f"index.faiss: sha256 {_sha(out / 'index.faiss')[:12]}..., the manifest recorded "
        f"{manifest['search_index']['sha256']['index.faiss'][:12]}... (changed or damaged)"
    ]
    with pytest.raises(IndexDamagedError, match="index.faiss: not a readable faiss index"):
        CorpusIndex.load(out)
    (out / "index.faiss").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a foreign file
    with pytest.raises(IndexDamagedError, match="index.faiss: not a readable faiss index"):
        CorpusIndex.load(out)
    (out / "index.faiss").write_bytes(faiss_bytes)
    (out / "rows.json").write_text("{not json")
    with pytest.raises(IndexDamagedError, match="rows.json: not valid JSON"):
        CorpusIndex.load(out)
    CorpusIndex.build(out)
    shard = out / "shards" / "00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-20])
    assert verify_index(out)[0].startswith("shards/00001.parquet: sha256")
    with pytest.raises(IndexDamagedError, match="00001.parquet: not a readable shard"):
        read_shards(out)
    broken = dict(manifest)
    del broken["contract"]
    (out / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(IndexDamagedError, match="key 'contract' is missing"):
        CorpusIndex.load(out)
    (out / "manifest.json").write_text('{"format": "e5omni-index/1", ')
    with pytest.raises(IndexDamagedError, match="manifest.json: not valid JSON"):
        verify_index(out)


def _sha(path: Path) -> str:
    from e5omni.index.build import file_sha256

    return file_sha256(path)


def test_cli_search_on_damaged_or_moved_files_exits_2_naming_the_file(model, tmp_path, capsys):
    from e5omni.cli import main

    model_dir = save_hub_folder(model, model.processor, tmp_path / "m")
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(f"caption {i}")
    out = tmp_path / "i"
    assert main(["index", str(model_dir), str(folder), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["index", "--verify", str(out)]) == 0
    assert "every file matches the manifest's sha256" in capsys.readouterr().out
    assert main(["search", str(out), "--text", "caption 1", "--verify", "--json"]) == 0
    assert {r["id"] for r in json.loads(capsys.readouterr().out)} == {"0.txt", "1.txt", "2.txt"}
    (folder / "3.txt").write_text("caption 3")  # the source changed: a resume says so and exits 2
    index_args = ["index", str(model_dir), str(folder), "--out", str(out), "--no-progress", "--resume"]
    assert main(index_args) == 2
    assert "1 added ('3.txt')" in capsys.readouterr().err
    assert main(index_args[:-1] + ["--rebuild-changed"]) == 2
    assert "--rebuild-changed goes with --resume" in capsys.readouterr().err
    assert main(index_args + ["--rebuild-changed"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == 4 and len(CorpusIndex.load(out).rows) == 4
    os.rename(model_dir, tmp_path / "moved")  # the model path in the manifest no longer exists
    assert main(["search", str(out), "--text", "caption 1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot load the model {str(model_dir)!r} (from {out}/manifest.json)" in err and "--model" in err
    assert main(["search", str(out), "--text", "caption 1", "--model", str(tmp_path / "moved")]) == 0
    index_file = out / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:100])
    capsys.readouterr()
    assert main(["index", "--verify", str(out)]) == 2
    assert "index.faiss: sha256" in capsys.readouterr().err
    assert main(["search", str(out), "--text", "x", "--model", str(tmp_path / "moved")]) == 2
    assert "index.faiss: not a readable faiss index" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse: a usage error
        main(["index", str(tmp_path / "moved"), str(folder), "--out", str(out), "--max-errors", "-1"])
    assert usage.value.code == 2 and "expected an integer >= 0, got -1" in capsys.readouterr().err


def test_ray_engine_refuses_an_unreachable_cluster_and_leaves_out_as_it_was(model, tmp_path):
    """Defect 8: `--ray-address` naming no cluster is a clear IndexBuildError (the CLI's exit 2) raised before --out
    is touched (no folder without a manifest that the next run would refuse)."""
    pytest.importorskip("ray")
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "i"
    with pytest.raises(IndexBuildError, match=f"cannot reach the Ray cluster at '127.0.0.1:{port}'"):
        build_corpus(model, folder, out, engine="ray", model_path="m", ray_address=f"127.0.0.1:{port}", **QUIET)
    assert not out.exists()
    (folder / "b.txt").write_text("y")
    build_corpus(model, folder, out, shard_size=1, **QUIET)
    _interrupt(out, 1)  # an unfinished index: a resume on an unreachable cluster leaves it byte for byte
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(IndexBuildError, match="expected auto, HOST:PORT or ray://HOST:PORT"):
        build_corpus(
            model, folder, out, engine="ray", model_path="m", ray_address="no-port", resume=True, shard_size=1, **QUIET
        )
    with pytest.raises(IndexBuildError, match="cannot reach the Ray cluster"):
        build_corpus(
            model,
            folder,
            out,
            engine="ray",
            model_path="m",
            ray_address=f"ray://127.0.0.1:{port}",
            shard_size=1,
            resume=True,
            **QUIET,
        )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_calibrated_search_uses_the_decoded_modality_mask_of_a_video_with_sound(model, tmp_path):
    """Defect 1: a video with its audio track is audio + video after decoding (what training calibrates with), not
    the structural `video` of the item. The shards store the processor's mask and search's calibrated score equals
    model.similarity(calibrated=True) with the decoded masks, for a document and for a query with sound."""
    from tests.helpers import write_clip

    saved = model.alignment.log_temperature.detach().clone()
    with torch.no_grad():  # distinct temperatures per modality (a fresh model has one value for all four)
        model.alignment.log_temperature.copy_(torch.log(torch.tensor([0.02, 0.03, 0.05, 0.08])))
    try:
        _calibrated_search(model, tmp_path, write_clip)
    finally:
        with torch.no_grad():
            model.alignment.log_temperature.copy_(saved)


def _calibrated_search(model, tmp_path, write_clip):
    folder = tmp_path / "c"
    folder.mkdir()
    write_clip(folder / "loud.mp4", audio="aac")
    write_clip(folder / "silent.mp4", audio=None)
    (folder / "t.txt").write_text("a tone that changes pitch")
    out = tmp_path / "i"
    build_corpus(model, folder, out, **QUIET)
    rows, vectors = read_shards(out)
    masks = {r["id"]: r["modality_mask"] for r in rows}
    assert masks == {
        "loud.mp4": [False, False, True, True],
        "silent.mp4": [False, False, False, True],
        "t.txt": [True, False, False, False],
    }
    assert {r["id"]: r["modalities"] for r in rows}["loud.mp4"] == ["video"]  # structural: what the page shows
    index = CorpusIndex.build(out)
    for query, query_mask in (("a tone", [True, False, False, False]), ({"video": str(folder / "loud.mp4")}, None)):
        results = index.search(model, query, k=3, calibrated=True)
        q = model.encode_query([query])
        decoded_q = query_mask or [False, False, True, True]
        for result in results:
            d = vectors[[r["id"] for r in rows].index(result.id)]
            want = model.similarity(
                q, torch.as_tensor(d)[None], calibrated=True, query_modalities=[decoded_q],
                doc_modalities=[masks[result.id]],
            )[0, 0].item()  # fmt: skip
            assert result.calibrated == pytest.approx(want, rel=1e-4), result.id
            assert result.score == pytest.approx(float(q[0] @ torch.as_tensor(d)), abs=1e-5)
    # the structural rule would differ for the video with sound (so the test sees the defect)
    loud = next(r for r in index.search(model, "a tone", k=3, calibrated=True) if r.id == "loud.mp4")
    tau_video = model.pair_temperature(torch.tensor([[True, False, False, False]]), torch.tensor([[0, 0, 0, 1]]))
    assert abs(loud.calibrated - loud.score / tau_video.item()) > 0.05 * abs(loud.calibrated)
