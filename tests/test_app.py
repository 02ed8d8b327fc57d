"""The search page without a browser: its search equals `e5omni search`, media are served by row only (nothing
outside the index's own files), bad uploads become typed messages, user content is escaped, safe defaults."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

pytest.importorskip("faiss", reason="faiss-cpu comes with the [index] extra")
pytest.importorskip("gradio", reason="gradio comes with the [app] extra")

from e5omni.app.engine import Query, SearchEngine  # noqa: E402
from e5omni.app.media import MediaNotFoundError, MediaStore  # noqa: E402
from e5omni.app.render import results_html, status_html  # noqa: E402
from e5omni.cli.common import load_inference_model  # noqa: E402
from e5omni.index import CorpusIndex  # noqa: E402
from tests.helpers import HOSTILE_TEXT, make_app_index  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    model_dir, folder, index_dir = make_app_index(root)
    model = load_inference_model(str(model_dir))
    index = CorpusIndex.load(index_dir)
    engine = SearchEngine(model, index, MediaStore.from_index(index.rows, folder, model_config=model.config))
    return {"root": root, "model_dir": model_dir, "folder": folder, "index_dir": index_dir, "engine": engine}


def _triples(results):
    return [(r.rank, r.id, r.score, r.calibrated) for r in results]


def test_the_page_search_equals_corpus_index_and_the_cli(built, capsys):
    engine, folder = built["engine"], built["folder"]
    index, model = engine.index, engine.model
    image = str(next((folder / "images").iterdir()))
    cases = [
        (Query(text="a red circle at the top"), "a red circle at the top", None),
        (
            Query(text="a shape", image=image, instruction="Find the matching clip"),
            {"text": "a shape", "image": image},
            "Find the matching clip",
        ),
    ]
    for query, item, instruction in cases:
        outcome = engine.search(query, k=7)
        assert outcome.error is None
        expected = index.search(model, item, k=7, instruction=instruction, calibrated=True)
        assert _triples(outcome.results) == _triples(expected)
    assert outcome.query_modalities == ["text", "image"]

    # the command line, run in-process: same ids, same order, same (rounded) scores
    from e5omni.cli import main

    capsys.readouterr()
    argv = ["search", str(built["index_dir"]), "--text", "a shape", "--image", image, "-k", "7"]
    assert main(argv + ["--instruction", "Find the matching clip", "--calibrated", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert [(c["rank"], c["id"]) for c in cli] == [(r.rank, r.id) for r in outcome.results]
    assert np.allclose([c["score"] for c in cli], [r.score for r in outcome.results], atol=1e-6)
    assert np.allclose([c["calibrated"] for c in cli], [r.calibrated for r in outcome.results], atol=1e-4)

    # "more like this" on a clip = searching with that clip's file
    row = next(e.row for e in engine.store.entries if "video" in e.files)
    clip = str(engine.store.entry(row).files["video"])
    more = engine.search(Query(row=row), k=5)
    assert _triples(more.results) == _triples(index.search(model, {"video": clip}, k=5, calibrated=True))
    assert more.query_modalities == ["video"] and more.query_label == f"more like {engine.store.entry(row).id}"


def test_a_modality_filter_keeps_the_matching_rows_of_the_full_ranking(built):
    engine = built["engine"]
    full = engine.index.search(engine.model, "a blue square", k=engine.size, calibrated=True)
    outcome = engine.search(Query(text="a blue square"), k=3, modalities=["audio"])
    expected = [r for r in full if "audio" in r.modalities][:3]
    assert len(expected) == 3 and _triples(outcome.results) == _triples(expected)
    assert all(r.rank > 0 for r in outcome.results) and outcome.searched >= 3


def _client(engine):
    from fastapi.testclient import TestClient

    from e5omni.app.page import create_app

    return TestClient(create_app(engine, model_name="tiny"))


def test_media_are_served_by_row_and_nothing_else_is(built, tmp_path):
    engine, _folder = built["engine"], built["folder"]
    store = engine.store
    image_row = next(e.row for e in store.entries if "image" in e.files)
    text_row = next(e.row for e in store.entries if not e.files)
    with _client(engine) as client:
        page = client.get("/")
        assert page.status_code == 200 and "fonts.googleapis" not in page.text
        served = client.get(f"/e5omni/media/{image_row}/image")
        assert served.status_code == 200 and served.content == store.entry(image_row).files["image"].read_bytes()
        assert served.headers["x-content-type-options"] == "nosniff"
        thumb = client.get(f"/e5omni/thumb/{image_row}")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG made from the image
        video_row = next(e.row for e in store.entries if "video" in e.files)
        assert client.get(f"/e5omni/poster/{video_row}").content[:2] == b"\xff\xd8"
        refused = [
            f"/e5omni/media/{text_row}/image",  # a text item has no image
            f"/e5omni/media/{len(store)}/image",  # no such row
            "/e5omni/media/-1/image",
            f"/e5omni/media/{image_row}/manifest",  # not a media kind
            "/e5omni/media/0/../../etc/passwd",
            "/e5omni/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
            "/e5omni/media/..%2F..%2Fmanifest.json/image",
            f"/e5omni/thumb/{text_row}",
        ]
        for url in refused:
            response = client.get(url)
            assert response.status_code in (404, 422), (url, response.status_code)
            assert b"root:" not in response.content
        # gradio's own file route serves its upload cache only: neither system files nor the corpus by path
        for path in (
            "/etc/passwd",
            str(store.entry(image_row).files["image"]),
            str(built["index_dir"] / "manifest.json"),
        ):
            response = client.get(f"/gradio_api/file={path}")
            assert response.status_code in (403, 404), (path, response.status_code)

        # a corpus file swapped for a symlink after start-up is not followed
        victim = store.entry(image_row).files["image"]
        kept = tmp_path / "kept.png"
        os.replace(victim, kept)
        try:
            os.symlink("/etc/passwd", victim)
            response = client.get(f"/e5omni/media/{image_row}/image")
            assert response.status_code == 404 and b"root:" not in response.content
            with pytest.raises(MediaNotFoundError, match="changed since start-up"):
                store.file(image_row, "image")
        finally:
            victim.unlink()
            os.replace(kept, victim)


def test_bad_uploads_become_typed_messages_never_tracebacks(built, tmp_path):
    engine = built["engine"]
    corrupt = tmp_path / "holiday.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9400, 9400)).save(bomb)  # 88 Mpx declared: refused from the header
    long_audio = tmp_path / "speech.wav"
    seconds = engine.limits.audio_seconds + 5
    sf.write(long_audio, np.zeros(int(16000 * seconds), np.float32), 16000)
    not_audio = tmp_path / "song.wav"
    not_audio.write_text("this is not audio")
    cases = [
        (Query(image=str(corrupt)), "MediaDecodeError", "holiday.png"),
        (Query(image=str(bomb), text="x"), "MediaTooLargeError", "bomb.png"),
        (Query(audio=str(long_audio)), "UploadTooLongError", f"at most {engine.limits.audio_seconds:g} s"),
        (Query(audio=str(not_audio)), "MediaDecodeError", "song.wav"),
        (Query(text="   "), "EmptyQueryError", "type some text"),
    ]
    for query, error, words in cases:
        outcome = engine.search(query, k=3)
        assert outcome.results == [] and outcome.error is not None, error
        assert outcome.error.startswith(error + ":") and words in outcome.error, outcome.error
        assert "Traceback" not in outcome.error and str(tmp_path) not in outcome.error  # no server paths either
        banner = status_html(outcome, engine.size)
        assert 'role="alert"' in banner and error in banner
    too_big = tmp_path / "huge.png"
    with open(too_big, "wb") as handle:  # a sparse file over the image byte limit
        handle.truncate(engine.limits.image_bytes + 1)
    outcome = engine.search(Query(image=str(too_big)), k=3)
    assert outcome.error.startswith("UploadTooLargeError:") and "huge.png" in outcome.error


def test_corpus_text_is_shown_as_text_not_markup(built):
    engine = built["engine"]
    outcome = engine.search(Query(text=HOSTILE_TEXT), k=engine.size)
    page = results_html(outcome, engine.store)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    cards = page.count('class="e5-card"')
    assert cards == engine.size == len(outcome.results)


def test_cli_binds_localhost_by_default_and_needs_the_corpus_source(built, capsys):
    from e5omni.cli import build_parser, main

    args = build_parser().parse_args(["app", str(built["index_dir"])])
    assert args.host == "127.0.0.1" and args.port == 7860
    # the manifest records the corpus the index was built from: no --source needed
    from e5omni.app.media import corpus_source
    from e5omni.cli.app import load_engine
    from e5omni.index import read_manifest

    manifest = read_manifest(built["index_dir"])
    assert corpus_source(manifest) == (str(built["folder"].resolve()), None)
    engine, _ = load_engine(str(built["index_dir"]), model=built["engine"].model)
    assert engine.store.missing == 0 and engine.size == built["engine"].size
    # an index whose manifest records none (built from an iterable of records) and no --source: a usage error
    bare = built["root"] / "no-source"
    shutil.copytree(built["index_dir"], bare)
    del manifest["source"]
    (bare / "manifest.json").write_text(json.dumps(manifest))
    assert main(["app", str(bare)]) == 2
    assert "--source" in capsys.readouterr().err
    assert main(["app", str(built["root"])]) == 2  # not an index folder
    assert "not an e5omni index folder" in capsys.readouterr().err


def test_rows_sharing_an_id_each_show_their_own_item(built):
    """An index built before ids had to be unique may hold one id twice (two lines of a table): each result card
    shows its own row's text and media, found by (id, source) (was: both showed the last row's)."""
    from e5omni.app.engine import Outcome
    from e5omni.app.media import MediaEntry
    from e5omni.index.search import SearchResult

    images = sorted((built["folder"] / "images").iterdir())
    entries = [
        MediaEntry(0, "same", "first twin caption", {"image": images[0]}, "items.jsonl line 1"),
        MediaEntry(1, "same", "second twin caption", {"image": images[1]}, "items.jsonl line 2"),
        MediaEntry(2, "other", "a third row", {}, "items.jsonl line 3"),
    ]
    store = MediaStore(entries, [built["folder"]])
    results = [
        SearchResult(1, 0.9, "same", "items.jsonl line 2", ["text", "image"]),
        SearchResult(2, 0.8, "other", "items.jsonl line 3", ["text"]),
        SearchResult(3, 0.7, "same", "items.jsonl line 1", ["text", "image"]),
    ]
    page = results_html(Outcome(results=results), store)
    cards = page.split('<article class="e5-card"')[1:]
    assert len(cards) == 3
    assert "second twin caption" in cards[0] and 'src="e5omni/thumb/1"' in cards[0] and 'data-more="1"' in cards[0]
    assert "first twin caption" in cards[2] and 'src="e5omni/thumb/0"' in cards[2] and 'data-more="0"' in cards[2]
    assert store.row_of("same") == 0 and store.row_of("same", "items.jsonl line 2") == 1
