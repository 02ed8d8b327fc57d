"""The search page in a real browser (headless Chromium driven by playwright): `e5omni app` on a tiny model and a
small indexed folder; a typed query, an image upload, "more like this", a corrupt upload; screenshots saved.

Skipped, with the reason printed, when /usr/bin/chromium or playwright is missing (`make test` on a machine without
a browser); `.ci/run` installs Debian's chromium.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_runs import REPO, env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _skip_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no browser: {CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no playwright: pip install 'e5-omni[test]'"
    for module in ("faiss", "gradio"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is missing (the [index] / [app] extras)"
    return None


REASON = _skip_reason()
if REASON:
    print(f"tests/test_app_browser.py skipped: {REASON}", file=sys.stderr)
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`e5omni app` in a subprocess on the index of tests/test_app.py's corpus; yields (url, paths)."""
    from tests.helpers import make_app_index

    root = tmp_path_factory.mktemp("app-browser")
    model_dir, folder, index_dir = make_app_index(root)
    port = _free_port()
    cmd = [sys.executable, "-m", "e5omni.cli", "app", str(index_dir), "--source", str(folder), "--port", str(port)]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"e5omni app exited {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("e5omni app did not start listening within 180 s")
    yield {"url": url, "model_dir": model_dir, "folder": folder, "index_dir": index_dir, "root": root}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _cards(page) -> list[tuple[str, float]]:
    return [
        (card.get_attribute("data-id"), float(card.get_attribute("data-score")))
        for card in page.query_selector_all("#e5-results .e5-card")
    ]


def _search_until(page, label: str) -> None:
    """Click Search and wait until the status line names this query."""
    page.click("#e5-search")
    try:
        page.wait_for_function(
            "label => { const s = document.querySelector('#e5-status'); return s && s.innerText.includes(label); }",
            arg=label,
            timeout=60_000,
        )
    except Exception:
        status = page.inner_text("#e5-status") if page.query_selector("#e5-status") else "(no status)"
        raise AssertionError(f"the page never showed the query {label!r}; its status line says: {status}") from None


def _shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / f"app-{name}.png"))
    extra = os.environ.get("E5OMNI_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / f"app-{name}.png", Path(extra) / f"app-{name}.png")


def test_search_upload_more_like_this_and_a_corrupt_upload_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    from e5omni.cli.common import load_inference_model
    from e5omni.index import CorpusIndex
    from tests.helpers import HOSTILE_TEXT

    index = CorpusIndex.load(server["index_dir"])
    model = load_inference_model(str(server["model_dir"]))
    folder, url = server["folder"], server["url"]
    caption_file = sorted((folder / "captions").glob("0*.txt"))[0]
    caption = caption_file.read_text()
    image_file = sorted((folder / "images").iterdir())[1]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        outside, dialogs, errors = [], [], []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#e5-text textarea")

        # 1. a typed query whose answer is known: a caption of the corpus finds itself first
        page.fill("#e5-text textarea", caption)
        _search_until(page, caption[:40])
        page.wait_for_selector("#e5-results .e5-card")
        shown = _cards(page)
        expected = index.search(model, caption, k=len(shown), calibrated=True)
        assert [i for i, _ in shown] == [r.id for r in expected]  # the order of e5omni search
        assert all(abs(s - r.score) < 2e-6 for (_, s), r in zip(shown, expected, strict=True))
        assert shown[0][0] == caption_file.relative_to(folder).as_posix()
        assert len(shown) == min(12, index.index.ntotal)  # the default k
        assert page.locator("#e5-results img.e5-thumb").count() > 0  # media previews are on the page
        page.wait_for_function(
            "() => [...document.querySelectorAll('#e5-results img.e5-thumb')].every(i => i.complete && i.naturalWidth > 0)"
        )
        _shot(page, tmp_path, "text-query")

        # 2. an image upload (the text cleared): the results change to those of the image
        page.fill("#e5-text textarea", "")
        page.get_by_role("tab", name="Image").click()
        page.set_input_files("#e5-image input[type=file]", str(image_file))
        page.wait_for_selector("#e5-image img")
        _search_until(page, image_file.name)
        by_image = _cards(page)
        expected = index.search(model, {"image": str(image_file)}, k=len(by_image), calibrated=True)
        assert [i for i, _ in by_image] == [r.id for r in expected] and by_image != shown
        assert all(abs(s - r.score) < 2e-6 for (_, s), r in zip(by_image, expected, strict=True))
        _shot(page, tmp_path, "image-query")

        # 3. "more like this" on a result: that item becomes the query
        target = page.query_selector_all("#e5-results .e5-card")[2]
        target_id = target.get_attribute("data-id")
        target.query_selector(".e5-more").click()
        page.wait_for_function(
            "id => document.querySelector('#e5-status').innerText.includes('more like ' + id)", arg=target_id
        )
        more = _cards(page)
        item = index.search  # the clicked item as e5omni search would take it from the folder
        path = folder / target_id
        query = (
            path.read_text()
            if path.suffix == ".txt"
            else {{".png": "image", ".wav": "audio", ".mp4": "video"}[path.suffix]: str(path)}
        )
        assert [i for i, _ in more] == [r.id for r in item(model, query, k=len(more))]

        # 4. a corrupt upload: the typed error's message in the page, no traceback
        corrupt = tmp_path / "corrupt.png"
        corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
        page.set_input_files("#e5-image input[type=file]", str(corrupt))
        page.click("#e5-search")
        page.wait_for_selector("#e5-status .e5-error", timeout=60_000)
        message = page.inner_text("#e5-status")
        assert "MediaDecodeError" in message and "corrupt.png" in message, message
        assert "Traceback" not in page.content() and "/tmp/" not in message
        _shot(page, tmp_path, "corrupt-upload")

        # 5. corpus text with markup and template syntax shows as text
        page.click("#e5-clear")
        page.wait_for_function("() => document.querySelector('#e5-status').innerText.includes('none yet')")
        page.fill("#e5-text textarea", HOSTILE_TEXT)
        _search_until(page, HOSTILE_TEXT[:20])
        snippets = page.locator("#e5-results .e5-snippet").all_inner_texts()
        assert HOSTILE_TEXT in snippets
        assert page.locator("#e5-results img[src=x]").count() == 0
        browser.close()

    assert dialogs == [], dialogs  # nothing in the corpus ran as code
    assert outside == [], outside  # nothing fetched from outside the app (fonts, CDNs, analytics)
    assert errors == [], errors
    for name in ("text-query", "image-query", "corrupt-upload"):
        assert (tmp_path / f"app-{name}.png").stat().st_size > 10_000
