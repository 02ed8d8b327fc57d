"""The search page under attack, over a real uvicorn server on 127.0.0.1 driven with raw HTTP (gradio's API routes,
raw request lines for the file routes): a request naming a server file as its upload (/etc/passwd,
/proc/self/environ, /dev/zero, a FIFO or a symlink in the upload folder, a path out of it) is refused quickly and
nothing outside the upload folder is ever copied or served; the server keeps answering. Also: bounded query text and
request bodies, one shared decode per thumbnail and a bounded pool, uploads deleted after their time, the token gate,
the --host warning."""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("faiss", reason="faiss-cpu comes with the [index] extra")
pytest.importorskip("gradio", reason="gradio comes with the [app] extra")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from e5omni.app.engine import SearchEngine  # noqa: E402
from e5omni.app.media import MediaEntry, MediaStore  # noqa: E402
from e5omni.app.page import create_app  # noqa: E402
from e5omni.app.uploads import UploadRefusedError, checked_upload, upload_folder  # noqa: E402
from e5omni.cli.common import load_inference_model  # noqa: E402
from e5omni.index import CorpusIndex  # noqa: E402
from tests.helpers import make_app_index  # noqa: E402

SECRET = b"e5omni-secret-" + os.urandom(8).hex().encode()
QUICK = 10.0  # seconds: a refusal must come back well within this (a read of /dev/zero never would)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """uvicorn serving `app` on 127.0.0.1 in a thread of this process."""

    def __init__(self, app):
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-security")
    model_dir, folder, index_dir = make_app_index(root)
    model = load_inference_model(str(model_dir))
    index = CorpusIndex.load(index_dir)
    engine = SearchEngine(model, index, MediaStore.from_index(index.rows, folder, model_config=model.config))
    secret = root / "secret.png"  # a file outside the upload folder, in the system's temp folder like the uploads
    secret.write_bytes(SECRET)
    return {"root": root, "engine": engine, "folder": folder, "secret": secret}


@pytest.fixture(scope="module")
def live(built):
    with Live(create_app(built["engine"], model_name="tiny")) as server:
        yield server


def _file_data(path: str, name: str = "x.png") -> dict:
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def call_run(base: str, data: list, timeout: float = QUICK) -> tuple[str, str, float]:
    """gradio's HTTP API as a script uses it: POST /gradio_api/call/run, then read the event stream.
    Returns (event, data, seconds)."""
    start = time.perf_counter()
    posted = httpx.post(f"{base}/gradio_api/call/run", json={"data": data}, timeout=timeout)
    assert posted.status_code == 200, posted.text
    event_id = posted.json()["event_id"]
    stream = httpx.get(f"{base}/gradio_api/call/run/{event_id}", timeout=timeout).text
    events = [line[len("event: ") :] for line in stream.splitlines() if line.startswith("event: ")]
    payload = [line[len("data: ") :] for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], payload[-1] if payload else "", time.perf_counter() - start


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET with the request line exactly as given (no client-side normalisation of `..` or %2e)."""
    with socket.create_connection(("127.0.0.1", port), timeout=QUICK) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    return int(response.split(b" ", 2)[1]), response.partition(b"\r\n\r\n")[2]


def _upload_tree_bytes() -> bytes:
    folder = upload_folder()
    out = []
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out.append(path.read_bytes())
    return b"".join(out)


def _inputs(kind: str, file_data: dict, text: str | None = None) -> list:
    slots = {"image": 2, "audio": 3, "video": 4}
    data = [text, None, None, None, None, 3, ["text", "image", "audio", "video"]]
    data[slots[kind]] = file_data
    return data


def test_request_named_server_files_are_refused_quickly_and_never_copied_or_served(built, live):
    folder = upload_folder()
    fifo = folder / "attack-fifo.wav"
    link = folder / "attack-link.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    if not link.exists():
        os.symlink("/etc/passwd", link)
    attacks = [
        "/etc/passwd",
        "/proc/self/environ",
        "/dev/zero",
        str(built["secret"]),
        str(fifo),
        str(link),
        f"{folder}/../../../../etc/passwd",
        f"{folder}/%2e%2e/%2e%2e/etc/passwd",
        "http://127.0.0.1:1/x.png",
    ]
    try:
        for path in attacks:
            for kind in ("image", "audio", "video"):
                event, data, seconds = call_run(live.base, _inputs(kind, _file_data(path), text="a red circle"))
                assert event == "error", (path, kind, event, data)
                assert seconds < QUICK, (path, kind, seconds)
                assert "root:" not in data and SECRET.decode() not in data
            # the server still answers (the /dev/zero attempt left no thread spinning on it)
            assert httpx.get(f"{live.base}/", timeout=QUICK).status_code == 200
        copied = _upload_tree_bytes()
        assert b"root:x:0:0" not in copied and SECRET not in copied
        # a real search still works afterwards
        event, data, _ = call_run(live.base, ["a red circle at the top", None, None, None, None, 3, ["text"]])
        assert event == "complete" and "e5-card" in data, data
    finally:
        fifo.unlink()
        link.unlink()


def test_the_file_routes_serve_nothing_outside_the_upload_folder(built, live):
    folder = upload_folder()
    store = built["engine"].store
    image_row = next(e.row for e in store.entries if "image" in e.files)
    corpus_image = str(store.entry(image_row).files["image"])
    targets = [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=/proc/self/environ",
        f"/gradio_api/file={built['secret']}",
        f"/gradio_api/file={corpus_image}",
        f"/gradio_api/file={folder}/../../../../etc/passwd",
        f"/gradio_api/file={folder}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/gradio_api/file=%2fetc%2fpasswd",
        "/gradio_api/file=..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/gradio_api/file/etc/passwd",
        "/e5omni/media/0/../../../../etc/passwd",
        "/e5omni/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd/image",
        f"/e5omni/media/{image_row}/..%2f..%2fmanifest.json",
        "/e5omni/thumb/..%2f..%2fetc%2fpasswd",
        "/e5omni/poster/-1",
        "/static/../../../../etc/passwd",
        "/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ]
    for target in targets:
        status, body = raw_get(live.port, target)
        assert status in (400, 403, 404, 422), (target, status)
        assert b"root:" not in body and SECRET not in body, target
    status, body = raw_get(live.port, f"/e5omni/media/{image_row}/image")  # the page's own media still served
    assert status == 200 and body == Path(corpus_image).read_bytes()


def test_a_real_upload_is_searched_and_refused_kinds_never_reach_the_model(built, live):
    image = next((built["folder"] / "images").iterdir())
    with open(image, "rb") as handle:
        uploaded = httpx.post(
            f"{live.base}/gradio_api/upload", files={"files": (image.name, handle, "image/png")}, timeout=QUICK
        )
    assert uploaded.status_code == 200, uploaded.text
    path = uploaded.json()[0]
    assert Path(path).resolve().is_relative_to(upload_folder())
    event, data, _ = call_run(live.base, _inputs("image", _file_data(path, image.name)))
    assert event == "complete" and "e5-card" in data and image.name in data, data


def test_query_text_and_request_bodies_are_bounded(built, live):
    limit = built["engine"].limits.text_chars
    assert limit == 8 * built["engine"].model.config.max_length
    event, data, _ = call_run(live.base, ["x" * (limit + 1), None, None, None, None, 3, ["text"]])
    assert event == "complete" and "QueryTooLongError" in data and f"{limit:,} characters" in data, data
    event, data, _ = call_run(live.base, ["a circle", "y" * (limit + 1), None, None, None, 3, ["text"]])
    assert event == "complete" and "QueryTooLongError" in data and "instruction" in data
    huge = httpx.post(f"{live.base}/gradio_api/call/run", json={"data": ["z" * (4 << 20)]}, timeout=QUICK)
    assert huge.status_code == 413
    assert httpx.get(f"{live.base}/", timeout=QUICK).status_code == 200


def test_concurrent_first_requests_share_one_decode_per_thumbnail(built, live):
    store = built["engine"].store
    rows = [e.row for e in store.entries if "image" in e.files and (e.row, "thumb") not in store._cache]
    assert len(rows) >= 2
    before = store.decodes

    def get(row):
        return httpx.get(f"{live.base}/e5omni/thumb/{row}", timeout=60)

    with ThreadPoolExecutor(40) as pool:
        same = list(pool.map(get, [rows[0]] * 40))
    assert {r.status_code for r in same} == {200} and len({r.content for r in same}) == 1
    assert store.decodes - before == 1  # forty requests, one decode
    with ThreadPoolExecutor(40) as pool:
        mixed = list(pool.map(get, [rows[i % len(rows)] for i in range(40)]))
    assert {r.status_code for r in mixed} == {200}
    assert store.decodes - before == len(rows) and store.peak_decodes <= 2


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_forty_concurrent_first_thumbnails_keep_memory_flat(tmp_path):
    """40 threads (what uvicorn's pool would run) ask for 40 different 12 Mpx images at once: two decode at a time,
    in the store's own threads, so the peak resident memory grows by about two decodes' worth, not forty (before:
    2 GB on this machine)."""
    from PIL import Image

    side = 3464  # 12 Mpx: 36 MB as RGB
    picture = tmp_path / "big-0.png"
    Image.new("RGB", (side, side), (120, 30, 200)).save(picture)
    paths = [picture] + [tmp_path / f"big-{i}.png" for i in range(1, 42)]
    for path in paths[1:]:
        os.link(picture, path)
    store = MediaStore([MediaEntry(i, p.name, None, {"image": p}) for i, p in enumerate(paths)], [tmp_path])
    store.thumbnail(0)  # warm the decoder's imports
    _peak_rss_reset()
    base = _peak_rss_mb()
    store.thumbnail(1)
    one = _peak_rss_mb() - base
    _peak_rss_reset()
    base = _peak_rss_mb()
    with ThreadPoolExecutor(40) as pool:
        thumbs = list(pool.map(store.thumbnail, range(2, 42)))
    grown = _peak_rss_mb() - base
    assert all(t[:2] == b"\xff\xd8" for t in thumbs) and store.peak_decodes <= 2
    assert grown < 3 * one + 32, f"peak RSS grew {grown:.0f} MB for 40 decodes; one decode takes {one:.0f} MB"


def test_uploads_are_deleted_after_their_time(built):
    image = next((built["folder"] / "images").iterdir())
    with Live(create_app(built["engine"], model_name="tiny", upload_ttl=1)) as server:
        with open(image, "rb") as handle:
            path = Path(
                httpx.post(f"{server.base}/gradio_api/upload", files={"files": handle}, timeout=QUICK).json()[0]
            )
        assert path.exists()
        deadline = time.time() + 8
        while path.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert not path.exists()


def test_checked_upload_refuses_without_reading(tmp_path):
    folder = tmp_path / "uploads"
    (folder / "h").mkdir(parents=True)
    good = folder / "h" / "photo.png"
    good.write_bytes(b"\x89PNG" + b"\x00" * 100)
    assert checked_upload(str(good), "image", 1000, folder.resolve()) == str(good.resolve())
    os.mkfifo(folder / "h" / "pipe.wav")
    os.symlink("/etc/passwd", folder / "h" / "link.png")
    os.symlink(good, folder / "h" / "inside-link.png")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    cases = {
        str(folder / "h" / "pipe.wav"): "not a regular file",
        str(folder / "h" / "link.png"): "not a file uploaded",
        str(folder / "h" / "inside-link.png"): "not a regular file",
        "/dev/zero": "not a file uploaded",
        str(outside): "not a file uploaded",
        f"{folder}/h/../../outside.png": "not a file uploaded",
        str(folder): "not a file uploaded",
        "h/photo.png": "not a file uploaded",
        "https://example.com/photo.png": "not a file uploaded",
        "bad\x00name": "not a file uploaded",
    }
    for path, words in cases.items():
        with pytest.raises(UploadRefusedError, match=words):
            checked_upload(path, "image", 1000, folder.resolve())
    with pytest.raises(UploadRefusedError, match="photo.png is 0.0 MiB; the limit is 0 MiB"):
        checked_upload(str(good), "image", 10, folder.resolve())


def test_the_token_gates_every_route(built):
    from fastapi.testclient import TestClient

    token = "t0ken-" + "k" * 20
    store = built["engine"].store
    image_row = next(e.row for e in store.entries if "image" in e.files)
    with TestClient(create_app(built["engine"], model_name="tiny", token=token)) as client:
        for url in ("/", f"/e5omni/thumb/{image_row}", f"/e5omni/media/{image_row}/image", "/gradio_api/info"):
            assert client.get(url).status_code == 401, url
            assert client.get(url, headers={"Authorization": "Bearer wrong-" + token}).status_code == 401
            assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200, url
        assert client.post("/gradio_api/upload", files={"files": ("a.png", b"x")}).status_code == 401
        opened = client.get(f"/?token={token}")
        assert opened.status_code == 200 and "httponly" in opened.headers["set-cookie"].lower()
        assert client.get(f"/e5omni/thumb/{image_row}").status_code == 200  # the cookie now carries it


def test_a_public_host_prints_a_warning_and_a_token_file_is_checked(built, tmp_path, capsys):
    from e5omni.cli import main
    from e5omni.cli.app import host_warning

    assert host_warning("127.0.0.1", None) is None and host_warning("::1", None) is None
    assert host_warning("localhost", None) is None
    assert "no access control" in host_warning("0.0.0.0", None)
    assert "token" in host_warning("192.168.1.5", "x" * 20) and "no access control" not in host_warning(
        "192.168.1.5", "x" * 20
    )
    assert main(["app", str(built["root"]), "--host", "0.0.0.0"]) == 2  # not an index folder: after the warning
    err = capsys.readouterr().err
    assert "WARNING" in err and "--token-file" in err
    short = tmp_path / "token"
    short.write_text("abc\n")
    assert main(["app", str(built["root"]), "--token-file", str(short)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["app", str(built["root"]), "--token-file", str(tmp_path / "none")]) == 2
    assert "cannot read it" in capsys.readouterr().err
