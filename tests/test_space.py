"""The Space of a published model: what is staged (app, pinned requirements, the demo corpus, README metadata linking
the model), one commit to a Space repo through a recording fake HfApi, the dry run of `e5omni push --space`, the
model card's link, and the corpus refusals. No network."""

from __future__ import annotations

import ast
import json
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from huggingface_hub import CommitOperationDelete

from e5omni.publish import DisallowedFileError
from e5omni.publish.space import push_space, stage_space, wheel_name
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model
from tests.helpers import FAKE_TOKEN, FakeHfApi

pytest.importorskip("gradio", reason="gradio comes with the [app] extra")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    return save_hub_folder(model, processor, tmp_path_factory.mktemp("space") / "model")


@pytest.fixture(scope="module")
def staged(model_folder):
    return stage_space("me/e5-omni-search", "me/e5-omni-tiny", model_folder=model_folder, revision="a" * 40)


class SpaceRecordingApi(FakeHfApi):
    """The publish tests' fake Hub, also recording which repo type each call addressed."""

    def __init__(self):
        super().__init__()
        self.repo_types: list[tuple[str, str | None]] = []

    def create_repo(self, repo_id, *, repo_type=None, space_sdk=None, **kwargs):
        self.repo_types.append(("create_repo", repo_type))
        self.space_sdk = space_sdk
        return super().create_repo(repo_id, **kwargs)

    def repo_info(self, repo_id, *, repo_type=None, **kwargs):
        self.repo_types.append(("repo_info", repo_type))
        return super().repo_info(repo_id, **kwargs)

    def list_repo_files(self, repo_id, *, repo_type=None, **kwargs):
        self.repo_types.append(("list_repo_files", repo_type))
        return super().list_repo_files(repo_id, **kwargs)

    def create_commit(self, repo_id, operations, *, repo_type=None, **kwargs):
        self.repo_types.append(("create_commit", repo_type))
        self.operations = list(operations)
        return super().create_commit(repo_id, self.operations, **kwargs)


def test_the_staged_space_runs_the_page_on_the_models_requirements(staged, model_folder, tmp_path):
    files = {f.path: f for f in staged}
    assert {"README.md", "app.py", "requirements.txt"} <= set(files)
    corpus = [p for p in files if p.startswith("corpus/")]
    assert len(corpus) == 24 and {p.split("/")[1] for p in corpus} == {"images", "sounds", "clips", "captions"}

    readme = files["README.md"].data.decode()
    meta = yaml.safe_load(readme.split("---\n")[1])
    import gradio

    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert meta["models"] == ["me/e5-omni-tiny"] and len(meta["short_description"]) <= 60
    assert "https://huggingface.co/me/e5-omni-tiny" in readme

    pins = json.loads((model_folder / "config_sentence_transformers.json").read_text())["requirements"]
    lines = files["requirements.txt"].data.decode().splitlines()
    assert all(f"{name}{spec}" in lines for name, spec in pins.items())
    version = metadata.version("e5-omni")
    assert f"e5-omni[app]=={version}" not in lines  # no package index has it: the Space could not build
    assert not any(line.startswith("e5-omni") for line in lines)
    assert {"gradio<7,>=6", "faiss-cpu>=1.9", "pyarrow>=15", "soundfile>=0.13"} <= set(lines)  # [app] -> [index]

    app = files["app.py"].data.decode()
    tree = ast.parse(app)  # valid Python that calls run_space with the model, the pinned revision and the corpus
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_space")
    assert {k.arg: ast.literal_eval(k.value) for k in call.keywords}["corpus"] == "corpus"
    assert "MODEL_ID = 'me/e5-omni-tiny'" in app and f"REVISION = {'a' * 40!r}" in app

    # the bundled corpus indexes cleanly with the model (what the Space does on start-up)
    from e5omni.index import build_corpus
    from e5omni.publish import write_staged

    out = write_staged(staged, tmp_path / "space")
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    summary = build_corpus(model, out / "corpus", tmp_path / "index", show_progress_bar=False)
    assert (summary.embedded, summary.failed) == (24, 0)


def test_push_space_is_one_commit_to_a_space_repo_and_removes_stale_files(staged):
    api = SpaceRecordingApi()
    first = push_space(staged, "me/e5-omni-search", api=api, token=FAKE_TOKEN, verbose=False)
    assert [c[0] for c in api.calls].count("create_commit") == 1
    assert {kind for _, kind in api.repo_types} == {"space"} and api.space_sdk == "gradio"
    committed = api.commit_files("me/e5-omni-search")
    assert set(committed) == {f.path for f in staged} | {".gitattributes"}
    assert committed["app.py"] == next(f.data for f in staged if f.path == "app.py")
    # a later push: the stale file goes in the same commit, on top of the head it read
    api.add_commit("me/e5-omni-search", {**committed, "old.py": b"x"}, first.commit_oid, "manual edit", "main")
    second = push_space(staged, "me/e5-omni-search", api=api, token=FAKE_TOKEN, verbose=False)
    assert second.deleted == ("old.py",)
    assert [op.path_in_repo for op in api.operations if isinstance(op, CommitOperationDelete)] == ["old.py"]
    assert "old.py" not in api.commit_files("me/e5-omni-search")
    assert all(token in (None, FAKE_TOKEN) for token in api.tokens)


def test_push_dry_run_with_space_stages_both_and_the_card_links_the_space(model_folder, tmp_path):
    from e5omni.cli import main

    out = tmp_path / "dry"
    argv = ["push", str(model_folder), "--repo-id", "me/e5-omni-tiny", "--space", "me/e5-omni-search"]
    assert main(argv + ["--dry-run", str(out)]) == 0
    card = (out / "model" / "README.md").read_text()
    assert "https://huggingface.co/spaces/me/e5-omni-search" in card
    assert (out / "space" / "app.py").is_file() and len(list((out / "space" / "corpus").rglob("*.*"))) == 24
    assert "me/e5-omni-tiny" in (out / "space" / "README.md").read_text()
    # without --space the card has no Space line
    assert main(["push", str(model_folder), "--repo-id", "me/e5-omni-tiny", "--dry-run", str(tmp_path / "plain")]) == 0
    assert "huggingface.co/spaces" not in (tmp_path / "plain" / "README.md").read_text()


def test_a_corpus_with_a_symlink_or_a_foreign_file_is_refused_before_anything_is_sent(model_folder, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("a red circle")
    (corpus / "passwd.txt").symlink_to("/etc/passwd")
    (corpus / "model.pt").write_bytes(b"\x80\x04")
    with pytest.raises(DisallowedFileError) as err:
        stage_space("me/s", "me/m", model_folder=model_folder, corpus=corpus)
    assert "passwd.txt" in str(err.value) and "model.pt" in str(err.value)
    from e5omni.cli import main

    out = tmp_path / "dry"
    argv = ["push", str(model_folder), "--repo-id", "me/m", "--space", "me/s", "--space-corpus", str(corpus)]
    assert main(argv + ["--dry-run", str(out)]) == 2
    assert "passwd.txt" in capsys.readouterr().err and not out.exists()  # the model was not staged either
    (corpus / "passwd.txt").unlink()
    (corpus / "model.pt").unlink()
    files = {f.path for f in stage_space("me/s", "me/m", model_folder=model_folder, corpus=corpus)}
    assert files == {"README.md", "app.py", "requirements.txt", "corpus/a.txt", f"wheels/{wheel_name()}"}
    assert not Path(tmp_path / "dry").exists()


def test_the_space_ships_the_wheel_of_this_exact_version_and_app_py_loads_it(staged, tmp_path):
    """No index has e5-omni at this version, so the Space carries its wheel; app.py checks its sha256 and puts it
    first on the import path (Spaces install requirements.txt before the repo's files exist in the image)."""
    import hashlib
    import subprocess
    import sys
    import zipfile

    from e5omni.publish import write_staged

    version = metadata.version("e5-omni")
    files = {f.path: f for f in staged}
    wheel = files[f"wheels/e5_omni-{version}-py3-none-any.whl"]
    out = write_staged(staged, tmp_path / "space")
    with zipfile.ZipFile(out / wheel.path) as archive:
        names = set(archive.namelist())
        meta = archive.read(f"e5_omni-{version}.dist-info/METADATA").decode()
    assert f"Version: {version}" in meta.splitlines()
    assert {
        "e5omni/app/space.py",
        "e5omni/app/page.py",
        "e5omni/app/uploads.py",
        "modeling_e5omni/__init__.py",
    } <= names
    app = files["app.py"].data.decode()
    assert f"WHEEL = HERE / {wheel.path!r}" in app and hashlib.sha256(wheel.data).hexdigest() in app
    requirements = files["requirements.txt"].data.decode()
    assert wheel.path in requirements  # the comment says where the package itself comes from

    # app.py imported (not run) from the staged folder: e5omni comes from the wheel, not from this checkout
    probe = (
        "import runpy, sys; runpy.run_path('app.py', run_name='space_app'); "
        "import e5omni.app.space, e5omni.app.uploads; print(e5omni.app.space.__file__)"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=out, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = Path(done.stdout.strip().splitlines()[-1])
    assert loaded.is_relative_to(tmp_path) and "e5omni-wheel-" in str(loaded), loaded

    # a wheel that is not the one app.py was published with is refused before anything is imported
    (out / wheel.path).write_bytes(wheel.data[:-10] + b"0123456789")
    done = subprocess.run([sys.executable, "-c", probe], cwd=out, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "sha256 differs" in done.stderr


def test_a_given_wheel_of_another_version_is_refused(model_folder, tmp_path):
    from e5omni.publish import IncompleteFolderError

    fake = tmp_path / "e5_omni-9.9.9-py3-none-any.whl"
    fake.write_bytes(b"PK")
    with pytest.raises(IncompleteFolderError, match=f"expected the wheel {wheel_name()}"):
        stage_space("me/s", "me/m", model_folder=model_folder, wheel=fake)


@pytest.mark.slow
def test_the_staged_requirements_install_offline_into_a_fresh_virtualenv(staged, tmp_path):
    """A fresh virtualenv that sees this project's site-packages (so torch is not downloaded again), then
    `pip install --no-index -r requirements.txt` from the staged folder: everything it lists resolves, and
    app.py then imports the page from the staged wheel."""
    import site
    import subprocess
    import sys
    import sysconfig

    from e5omni.publish import write_staged

    out = write_staged(staged, tmp_path / "space")
    venv = tmp_path / "venv"
    # no pip / setuptools of its own: an old bundled setuptools would shadow the project's (torch needs >= 77);
    # `python -m pip` then runs the project's pip, installing into this virtualenv
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the project's site-packages as a plain path: its distributions count as installed, but its .pth files (the
    # editable e5omni of this checkout) are not run, so e5omni can only come from the Space's wheel
    ours = sysconfig.get_paths()["purelib"]
    assert ours in site.getsitepackages() or ours in sys.path
    Path(purelib, "project-site.pth").write_text(ours + "\n")
    env = {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    pip = [str(python), "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "-r", "requirements.txt"]
    done = subprocess.run(pip, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    probe = (
        "import runpy; runpy.run_path('app.py', run_name='space_app'); "
        "import e5omni.app.space; print(e5omni.app.space.__file__)"
    )
    done = subprocess.run([str(python), "-c", probe], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "e5omni-wheel-" in done.stdout.strip().splitlines()[-1]


def test_push_space_wheel_flag_reaches_the_staging_and_is_checked(model_folder, tmp_path, capsys):
    """`e5omni push --space-wheel` is the wheel the Space ships: a wrong one is refused before anything is staged,
    and the flag without --space is a usage error."""
    from e5omni.cli import main

    out = tmp_path / "dry"
    base = ["push", str(model_folder), "--repo-id", "me/m", "--dry-run", str(out)]
    assert main(base + ["--space-wheel", str(tmp_path / "x.whl")]) == 2
    assert "--space-wheel needs --space" in capsys.readouterr().err
    fake = tmp_path / "e5_omni-0.0.1-py3-none-any.whl"
    fake.write_bytes(b"not a zip")
    assert main(base + ["--space", "me/s", "--space-wheel", str(fake)]) == 2
    assert fake.name in capsys.readouterr().err and not out.exists()
