"""`e5omni encode`: several items per run (flags in order, --item JSON, --items FILE.jsonl), JSON lines or .npy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
from transformers import AutoModel

from e5omni.cli import main
from e5omni.tiny import build_tiny
from tests.conftest import make_audio, make_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-encode")
    folder = build_tiny(root / "model", backbone="qwen2.5-omni", seed=0)
    data = root / "data"
    (data / "pics").mkdir(parents=True)
    make_image(1).save(data / "pics" / "one.png")
    make_image(2).save(root / "outside.png")
    audio = make_audio(1)
    soundfile.write(data / "tone.wav", audio["array"], audio["sampling_rate"])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    return {"folder": str(folder), "data": data, "root": root, "model": model}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["encode", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out: str) -> np.ndarray:
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["index"] for row in rows] == list(range(len(rows)))
    assert all(row["dim"] == len(row["embedding"]) for row in rows)
    return np.array([row["embedding"] for row in rows])


def test_every_flag_makes_one_item_in_order(setup, capsys):
    image = setup["data"] / "pics" / "one.png"
    combined = json.dumps({"text": "a caption", "image": str(image)})
    code, out, _ = _run(capsys, setup["folder"], "--text", "a", "--text", "b", "--image", image, "--item", combined)
    assert code == 0
    got = _rows(out)
    expected = setup["model"].encode_document(
        ["a", "b", {"image": str(image)}, {"text": "a caption", "image": str(image)}]
    )
    assert got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), atol=2e-6, rtol=0)
    assert np.abs(got[0] - got[1]).max() > 1e-3  # "a" is kept, not overwritten by "b"


def test_jsonl_items_and_npy_output(setup, capsys, tmp_path):
    data = setup["data"]
    lines = ['"plain text"', '{"image": "pics/one.png"}', "", '{"text": "a rising tone", "audio": "tone.wav"}']
    items_file = data / "items.jsonl"
    items_file.write_text("\n".join(lines) + "\n")
    out_file = tmp_path / "vectors.npy"
    code, out, _ = _run(capsys, setup["folder"], "--text", "first", "--items", items_file, "--output", out_file)
    assert code == 0 and "wrote 4 embeddings" in out
    expected_items = [
        "first",
        "plain text",
        {"image": str((data / "pics" / "one.png").resolve())},
        {"text": "a rising tone", "audio": str((data / "tone.wav").resolve())},
    ]
    saved = np.load(out_file)
    assert saved.dtype == np.float32
    np.testing.assert_allclose(saved, setup["model"].encode_document(expected_items).numpy(), atol=1e-6, rtol=0)
    # --query adds the query prompt; the batch size changes nothing
    code, out, _ = _run(capsys, setup["folder"], "--items", items_file, "--query", "--batch-size", "1")
    assert code == 0
    np.testing.assert_allclose(_rows(out), setup["model"].encode_query(expected_items[1:]).numpy(), atol=2e-6, rtol=0)


def test_bad_items_fail_with_one_line_naming_the_item(setup, capsys):
    data, folder = setup["data"], setup["folder"]
    escaping = data / "escaping.jsonl"
    escaping.write_text('"fine"\n{"image": "../outside.png"}\n')
    unknown = json.dumps({"text": "x", "colour": "red"})
    cases = [
        (["--text", "ok", "--items", escaping], ["item 2", "escaping.jsonl line 2", "refusing media path"]),
        (["--text", "ok", "--text", "ok", "--item", unknown], ["item 2", "unknown keys", "colour"]),
        (["--item", "{not json"], ["item 0 (--item)", "invalid JSON"]),
        (["--text", "ok", "--image", data / "missing.png"], ["item 1", "not found"]),
        (["--text", "ok", "--item", "[1, 2]"], ["item 1 (--item)", "expected a JSON string or object"]),
        (["--text", ""], ["item 0 (--text)", "empty"]),
        (["--text", "a", "--output", "vectors.txt"], ["--output must name a .npy file"]),
        ([], ["give at least one item"]),
    ]
    for args, needles in cases:
        code, out, err = _run(capsys, folder, *args)
        assert code == 2, (args, err)
        # stderr may also hold transformers' weight-loading progress; the error is its one "encode:" line
        errors = [line for line in err.splitlines() if "encode: " in line]
        assert not out and len(errors) == 1 and errors[0].startswith("encode: "), (args, err)
        for needle in needles:
            assert needle in errors[0], (args, needle, err)


def test_one_inference_loader_for_the_cli_and_mteb(tmp_path, monkeypatch):
    """`e5omni.loading.load_inference_model` is the one load-and-place step: the CLI and the mteb encoder call it."""
    from e5omni import loading
    from e5omni.cli.common import load_inference_model
    from e5omni.evaluation.mteb_encoder import _load
    from e5omni.tiny import build_tiny

    folder = build_tiny(tmp_path / "m", backbone="qwen2-vl")
    model = loading.load_inference_model(folder, device="cpu")
    assert not model.training and next(model.parameters()).device.type == "cpu"
    calls = []
    real = loading.load_inference_model
    monkeypatch.setattr(loading, "load_inference_model", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    load_inference_model(str(folder))
    _load(str(folder), None, "cpu")
    assert [a[0] for a, _ in calls] == [str(folder), str(folder)] and calls[1][1] == {"revision": None, "device": "cpu"}
