"""Opt-in remote media against a real HTTP server on loopback: bounded reads, typed errors, http(s) only.

Remote media is off by default (tests/test_inputs.py). Switched on, a URL body is read no further than
`max_remote_bytes` (declared or not), every failure is a `RemoteMediaError` naming the item, audio URLs work like
image and video URLs, and schemes that would read local files (file:, ftp:, data:) are refused.
"""

from __future__ import annotations

import copy
import io
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

from modeling_e5omni import RemoteMediaError
from tests.conftest import make_image, tiny

LIMIT = 2_000_000


def _png() -> bytes:
    buffer = io.BytesIO()
    make_image(5).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    bodies = {"/a.png": _png(), "/a.wav": _wav()}

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path in self.bodies:
            body = self.bodies[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/declared-huge":  # says 300 MB, would send it: refused from the header
            self.send_response(200)
            self.send_header("Content-Length", "300000000")
            self.end_headers()
            try:
                self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        elif self.path == "/undeclared-huge":  # no length, 50 MB streamed: read no further than the cap
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(800):
                    self.wfile.write(b"\x89" * 65536)
            except OSError:
                pass
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def remote_model():
    """The shared tiny Omni model with a copy of its config that fetches URLs (the shared config is untouched)."""
    model = tiny("qwen2.5-omni")
    saved, processor_saved = model.config, model.processor.config
    config = copy.deepcopy(saved)
    config.allow_remote_media, config.max_remote_bytes = True, LIMIT
    config.allow_private_remote_media = True  # the server is on loopback
    model.config, model.processor.config = config, config
    yield model
    model.config, model.processor.config = saved, processor_saved


def test_image_and_audio_urls_embed_like_the_bytes(remote_model, server, tmp_path):
    (tmp_path / "a.png").write_bytes(_Handler.bodies["/a.png"])
    (tmp_path / "a.wav").write_bytes(_Handler.bodies["/a.wav"])
    remote = remote_model.encode_document([{"image": f"{server}/a.png"}, {"audio": f"{server}/a.wav"}])
    local = remote_model.encode_document([{"image": str(tmp_path / "a.png")}, {"audio": str(tmp_path / "a.wav")}])
    assert float((remote - local).abs().max()) == 0.0


def test_bodies_over_the_cap_are_refused_without_buffering_them(remote_model, server):
    with pytest.raises(RemoteMediaError, match=r"item 1: image URL .* declares 300000000 bytes"):
        remote_model.encode_document(["fine", {"image": f"{server}/declared-huge"}])
    tracemalloc.start()
    try:
        with pytest.raises(RemoteMediaError, match=r"item 0: video URL .* more than max_remote_bytes=2000000"):
            remote_model.encode_document([{"video": f"{server}/undeclared-huge"}])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"50 MB undeclared body, cap 2 MB: peak traced memory {peak / 1e6:.1f} MB")
    assert peak < 4 * LIMIT  # bounded by the cap, not by the 50 MB the server would send


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("{server}/missing.png", r"item 0: cannot fetch image URL .*404"),
        ("http://127.0.0.1:9/a.png", r"item 0: cannot fetch image URL"),  # nothing listens on the discard port
        ("file:///etc/passwd", r"item 0: image URL scheme 'file' is not fetched"),
        ("ftp://127.0.0.1/a.png", r"item 0: image URL scheme 'ftp' is not fetched"),
    ],
)
def test_fetch_failures_are_typed_and_local_files_unreachable(remote_model, server, url, message):
    with pytest.raises(RemoteMediaError, match=message):
        remote_model.encode_document([{"image": url.format(server=server)}])


# ------------------------------------------------------------------------------------- the code a saved folder ships
MEDIA_MODULES = {
    "media_e5omni.py",
    "media_image_e5omni.py",
    "media_audio_e5omni.py",
    "media_video_e5omni.py",
    "media_remote_e5omni.py",
}


def _saved(tmp_path):
    model = tiny("qwen2.5-omni")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    model.processor.save_pretrained(folder)
    return folder


def test_a_saved_folder_ships_every_media_module_it_imports(tmp_path):
    """transformers copies the relative imports of the model code: each media module is in the folder, and every
    `from .x import` of every shipped file names a file that is there (nothing of ours is imported absolutely)."""
    import re

    folder = _saved(tmp_path)
    shipped = {path.name for path in folder.glob("*.py")}
    assert MEDIA_MODULES <= shipped, MEDIA_MODULES - shipped
    for name in shipped:
        text = (folder / name).read_text()
        for module in re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE):
            assert f"{module}.py" in shipped, f"{name} imports .{module}, which the folder lacks"
        assert not re.search(r"^\s*(from|import)\s+(modeling_e5omni|e5omni)\b", text, flags=re.MULTILINE), name


_CHILD = """
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_e5omni", "e5omni", "tests"):
            raise ImportError(f"{name} must not be importable here")
sys.meta_path.insert(0, Block())
from transformers import AutoModel, AutoProcessor
folder, url, local = sys.argv[1:4]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
model.set_processor(AutoProcessor.from_pretrained(folder, trust_remote_code=True))
configs = [model.config, model.processor.config]  # the processor reads its own copy
for config in configs:
    config.allow_remote_media = True
try:
    model.encode_document([{"image": url}])
    refused = None
except ValueError as err:
    refused = [type(err).__name__, getattr(err, "rule", None)]
for config in configs:
    config.allowed_remote_networks = ["127.0.0.1/32"]
same = bool((model.encode_document([{"image": url}]) == model.encode_document([{"image": local}])).all())
print(chr(10) + "RESULT", json.dumps({"refused": refused, "same": same}))  # its own line, whatever was printed before
"""


@pytest.mark.slow
def test_remote_policy_runs_from_a_saved_folder_without_our_package(tmp_path, server):
    """The Hub copy of the code (trust_remote_code, our packages unimportable) refuses loopback by default and
    fetches it once the network is opted in."""
    import json
    import os
    import subprocess
    import sys

    folder = _saved(tmp_path)
    (tmp_path / "a.png").write_bytes(_Handler.bodies["/a.png"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), f"{server}/a.png", str(tmp_path / "a.png")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert got == {"refused": ["RemoteMediaError", "address"], "same": True}
