"""Data files name the place: a latin-1 byte, a malformed line or a bad row in any schema's file is reported with the
file's path and the 1-based line (Parquet: the 0-based row), never an example index or a bare decode error."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from e5omni.data import BadRowError, DataError
from e5omni.data.mixture import MixtureError
from e5omni.data.specs import load_data_spec

datasets.utils.logging.disable_progress_bar()
LATIN1 = "café".encode("latin-1")  # b"caf\xe9": not UTF-8


def _lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _load_all(spec: str):
    examples = load_data_spec(spec)
    return [examples[i] for i in range(len(examples))]


def _check(err: pytest.ExceptionInfo, path: Path, line: int, unit: str = "line") -> None:
    assert f"{path} {unit} {line}" in str(err.value), str(err.value)


def _row(**fields) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_our_files_name_the_line_of_an_undecodable_byte(tmp_path, suffix):
    if suffix == ".jsonl":
        lines = [_row(query="q1", positive="p1"), b"", b'{"query": "' + LATIN1 + b'", "positive": "p"}']
        line = 3
    else:
        lines = [b"query,positive", b"q1,p1", b'"multi', b'line",p2', LATIN1 + b",p3"]
        line = 5
    path = _lines(tmp_path / f"train{suffix}", lines)
    with pytest.raises(BadRowError, match=r"not valid UTF-8: byte 0xe9") as err:
        load_data_spec(str(path))
    _check(err, path, line)


def test_our_files_name_the_line_of_a_malformed_record(tmp_path):
    path = _lines(tmp_path / "train.jsonl", [_row(query="q", positive="p"), b'{"query": "q", "positive": '])
    with pytest.raises(BadRowError, match="not valid JSON") as err:
        load_data_spec(str(path))
    _check(err, path, 2)
    # a CSV record names the line it starts on, even after a quoted cell spanning two lines
    path = _lines(tmp_path / "train.csv", [b"query,positive", b'"two', b'lines",p', b"q,p,extra"])
    with pytest.raises(BadRowError, match="expected 2 cells") as err:
        load_data_spec(str(path))
    _check(err, path, 4)


def test_tevatron_corpus_names_the_line(tmp_path):
    queries = _lines(
        tmp_path / "queries.jsonl",
        [_row(query_id="1", query_text="q", positive_document_ids=["d1"], negative_document_ids=[])],
    )
    corpus = tmp_path / "corpus.jsonl"
    good = [_row(docid="d0", text="zero"), _row(docid="d1", text="one")]
    for bad, line, message in [
        (b'{"docid": "d2", "text": "' + LATIN1 + b'"}', 3, "not valid UTF-8"),
        (b'{"docid": "d2", "text": "unterminated}', 3, "not valid JSON"),
        (_row(docid="d2", text=5), 3, r"column 'text': expected a string as on line 1, got a number"),
    ]:
        _lines(corpus, [*good, bad])
        with pytest.raises(BadRowError, match=message) as err:
            load_data_spec(f"tevatron:{queries}?corpus={corpus}")
        _check(err, corpus, line)
    _lines(corpus, [good[0], b"", _row(docid="d1", text=None)])  # a document with no content, after a blank line
    with pytest.raises(BadRowError, match="document 'd1' is empty") as err:
        _load_all(f"tevatron:{queries}?corpus={corpus}")
    _check(err, corpus, 3)
    _lines(corpus, [good[0], _row(docid="d0", text="again")])
    with pytest.raises(BadRowError, match=rf"duplicate docid 'd0' \(first at {corpus} line 1\)") as err:
        load_data_spec(f"tevatron:{queries}?corpus={corpus}")
    _check(err, corpus, 2)


def test_tevatron_queries_name_the_line(tmp_path):
    corpus = _lines(tmp_path / "corpus.jsonl", [_row(docid="d1", text="one")])
    queries = _lines(
        tmp_path / "queries.jsonl",
        [
            _row(query_id="1", query_text="q", positive_document_ids=["d1"]),
            _row(query_id="2", query_text="q", positive_document_ids=["missing"]),
        ],
    )
    with pytest.raises(BadRowError, match="document id 'missing' is not in the corpus") as err:
        _load_all(f"tevatron:{queries}?corpus={corpus}")
    _check(err, queries, 2)


def test_mmeb_names_the_line_of_a_text_table_and_the_row_of_parquet(tmp_path):
    head = dict(qry_image_path="", pos_text="p", pos_image_path="")
    path = _lines(
        tmp_path / "mmeb.jsonl",
        [_row(qry="q0", **head), b"", b'{"qry": "' + LATIN1 + b'", "qry_image_path": "", "pos_text": "p"}'],
    )
    with pytest.raises(BadRowError, match="not valid UTF-8") as err:
        load_data_spec(f"mmeb:{path}")
    _check(err, path, 3)
    _lines(path, [_row(qry="q0", **head), b"", _row(qry="", **dict(head, pos_text=""))])
    with pytest.raises(BadRowError, match="the query is empty") as err:
        _load_all(f"mmeb:{path}")
    _check(err, path, 3)
    parquet = tmp_path / "mmeb.parquet"
    datasets.Dataset.from_list([dict(qry="q0", **head), dict(qry="", **head)]).to_parquet(str(parquet))
    with pytest.raises(BadRowError, match="the query is empty") as err:
        _load_all(f"mmeb:{parquet}")
    _check(err, parquet, 1, unit="row")


def test_caption_tables_name_the_line(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"")
    path = _lines(tmp_path / "cap.csv", [b"caption,video", b"fine,v.mp4", b"caf\xe9,v.mp4"])
    with pytest.raises(BadRowError, match="not valid UTF-8") as err:
        load_data_spec(f"caption:{path}")
    _check(err, path, 3)
    _lines(path, [b"caption,video", b"fine,v.mp4", b"", b"another,../v.mp4"])
    with pytest.raises(DataError, match="'..' components are not allowed") as err:
        _load_all(f"caption:{path}")
    _check(err, path, 4)
    jsonl = _lines(tmp_path / "cap.jsonl", [_row(caption="fine", video="v.mp4"), b"{not json"])
    with pytest.raises(BadRowError, match="not valid JSON") as err:
        load_data_spec(f"caption:{jsonl}")
    _check(err, jsonl, 2)
    array = tmp_path / "cap.json"
    array.write_text('[\n  {"caption": "fine", "video": "v.mp4"},\n  {"caption": 3,\n   "video": "v.mp4"}\n]\n')
    with pytest.raises(BadRowError, match="expected a string as on line 2, got a number") as err:
        load_data_spec(f"caption:{array}")
    _check(err, array, 3)


def test_mixture_file_names_the_line(tmp_path):
    mix = _lines(tmp_path / "mix.yaml", [b"sources:", b"  - spec: synthetic:train", b"    name: caf\xe9"])
    with pytest.raises(BadRowError, match="not valid UTF-8") as err:
        load_data_spec(f"mix:{mix}")
    _check(err, mix, 3)
    mix.write_text("sources:\n  - spec: synthetic:train\n    weight: [1\n")
    with pytest.raises(MixtureError, match=rf"{mix} line \d+, column \d+: not valid YAML"):
        load_data_spec(f"mix:{mix}")
    mix.write_text("seed: 1\nsources:\n  - spec: synthetic:train\n  - spec: synthetic:test\n    weight: -1\n")
    with pytest.raises(MixtureError, match=rf"{mix} line 4, source 1 \(synthetic:test\): 'weight' must be"):
        load_data_spec(f"mix:{mix}")
