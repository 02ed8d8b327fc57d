"""A Hub Space for a published model: the search page over a small bundled corpus, staged and pushed in one commit.

    staged = stage_space("me/e5-omni-search", "me/e5-omni", model_folder="out/model")
    push_space(staged, "me/e5-omni-search", dry_run_dir="staged-space")          # or a real push (api=HfApi())

What one Space commit holds (identical in a dry run and a push):

    README.md          Space metadata (sdk: gradio at the installed version, app_file, `models: [MODEL]` so the model
                       page lists the Space) and what the page does, how to run it locally
    app.py             loads MODEL at the pinned revision, indexes `corpus/` on start-up (`e5omni index`'s engine),
                       serves `e5omni app`'s page on 0.0.0.0:7860 (what Spaces expect; locally it binds 127.0.0.1)
    requirements.txt   the model's own requirements (its config_sentence_transformers.json) + the requirements of
                       this e5-omni version with its [app] extra (read from the wheel's metadata): all from PyPI
    wheels/e5_omni-VERSION-py3-none-any.whl
                       this exact e5-omni, built from the installed source (or given: `wheel=` / E5OMNI_SPACE_WHEEL);
                       no package index has it, and Spaces install requirements.txt before the repo's files are
                       copied in, so app.py puts the wheel on the import path itself (after checking its sha256)
    corpus/...         the demo corpus (`e5omni.app.demo`: shapes as images, sounds, clips, captions), or the folder
                       given with `corpus=`: media and .txt files only, no symlinks, at most 500 files / 100 MB

The corpus is indexed on the Space rather than shipped as vectors: an index is only valid for the exact model it
was built with (its fingerprint), and the Space loads the model from the Hub.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from typing import Any

from e5omni.publish.errors import DisallowedFileError, HubError, IncompleteFolderError, SecretInFolderError
from e5omni.publish.push import _MISSING, PushResult, _hub_call
from e5omni.publish.stage import StagedFile, write_staged
from e5omni.publish.tokens import _TOKEN_RE, resolve_token

SPACE_COMMIT_MESSAGE = "Publish the e5-omni search Space"
MAX_CORPUS_FILES = 500
MAX_CORPUS_BYTES = 100 << 20
WHEEL_DIR = "wheels"
WHEEL_ENV = "E5OMNI_SPACE_WHEEL"
#: A wheel of e5-omni is a few hundred KB of Python; anything near this is not one.
MAX_WHEEL_BYTES = 20 << 20
_built_wheels: dict[str, Path] = {}


def _corpus_extensions() -> frozenset[str]:
    from e5omni.index.sources import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, TEXT_EXTENSIONS, VIDEO_EXTENSIONS

    return IMAGE_EXTENSIONS | AUDIO_EXTENSIONS | VIDEO_EXTENSIONS | TEXT_EXTENSIONS


def _generated(path: str, text: str) -> StagedFile:
    data = text.encode("utf-8")
    return StagedFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data)


def _file(path: str, source: Path) -> StagedFile:
    data = source.read_bytes()
    return StagedFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data)


def model_requirements(model_folder: str | os.PathLike | None) -> dict[str, str]:
    """The model's pinned requirements (config_sentence_transformers.json), or this install's when no folder."""
    if model_folder is not None:
        path = Path(model_folder) / "config_sentence_transformers.json"
        if not path.is_file():
            raise IncompleteFolderError(f"{model_folder} has no config_sentence_transformers.json", path=path.name)
        pins = json.loads(path.read_text(encoding="utf-8")).get("requirements") or {}
        if pins:
            return dict(pins)
    from e5omni.release import requirements

    return dict(requirements())


def wheel_name(version: str | None = None) -> str:
    return f"e5_omni-{version or metadata.version('e5-omni')}-py3-none-any.whl"


def _source_tree() -> Path | None:
    """The folder this e5-omni was installed from (an editable or local-folder install), if pip recorded one."""
    from urllib.parse import unquote, urlparse

    # several records may be visible (an in-tree e5_omni.egg-info beside the installed dist-info): the one pip wrote
    direct = next(
        (text for dist in metadata.distributions(name="e5-omni") if (text := dist.read_text("direct_url.json"))), None
    )
    if not direct:
        return None
    info = json.loads(direct)
    url = urlparse(info.get("url", ""))
    if url.scheme != "file" or "dir_info" not in info:
        return None
    folder = Path(unquote(url.path))
    return folder if (folder / "pyproject.toml").is_file() else None


def check_wheel(path: Path, version: str | None = None) -> dict[str, Any]:
    """The wheel's metadata (email headers) after checking it is e5-omni `version` with the page inside; else
    IncompleteFolderError naming the wheel and what is wrong."""
    version = version or metadata.version("e5-omni")
    if path.name != wheel_name(version):
        raise IncompleteFolderError(f"{path.name}: expected the wheel {wheel_name(version)}", path=str(path))
    if not path.is_file() or path.stat().st_size > MAX_WHEEL_BYTES:
        raise IncompleteFolderError(f"{path}: not a wheel file under {MAX_WHEEL_BYTES >> 20} MiB", path=str(path))
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            meta = Parser().parsestr(archive.read(f"e5_omni-{version}.dist-info/METADATA").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as err:
        raise IncompleteFolderError(f"{path.name}: not a readable e5-omni wheel ({err})", path=str(path)) from None
    missing = [
        n for n in ("e5omni/app/space.py", "e5omni/app/page.py", "modeling_e5omni/__init__.py") if n not in names
    ]
    if meta.get("Version") != version or missing:
        raise IncompleteFolderError(
            f"{path.name}: version {meta.get('Version')}, missing {missing}; expected e5-omni {version} with the page",
            path=str(path),
        )
    return {"metadata": meta}


def package_wheel(wheel: str | os.PathLike | None = None) -> Path:
    """The wheel of this exact e5-omni: `wheel` (or $E5OMNI_SPACE_WHEEL) when given, else built once per process
    from the source folder it was installed from (`pip wheel --no-deps`, on a copy: the source tree is not
    touched). IncompleteFolderError when there is neither."""
    version = metadata.version("e5-omni")
    given = wheel or os.environ.get(WHEEL_ENV)
    if given:
        path = Path(given)
        check_wheel(path, version)
        return path
    if version in _built_wheels and _built_wheels[version].is_file():
        return _built_wheels[version]
    source = _source_tree()
    if source is None:
        raise IncompleteFolderError(
            f"no wheel of e5-omni {version} to put in the Space: this install records no source folder to build "
            f"one from; pass the wheel (wheel= or {WHEEL_ENV}=PATH/{wheel_name(version)})",
            path=wheel_name(version),
        )
    out = Path(tempfile.mkdtemp(prefix="e5omni-space-wheel-"))
    _copy_build_inputs(source, out / "e5-omni-source")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(out / "e5-omni-source"),
        ],
        cwd=out,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(out / "e5-omni-source", ignore_errors=True)
    path = out / wheel_name(version)
    if done.returncode != 0 or not path.is_file():
        raise IncompleteFolderError(
            f"building the wheel of e5-omni {version} from {source} failed:\n{done.stderr[-2000:]}", path=str(source)
        )
    check_wheel(path, version)
    _built_wheels[version] = path
    return path


def _copy_build_inputs(source: Path, target: Path) -> None:
    """pyproject.toml, the readme / license files and the package folders it names: what `pip wheel` reads (the
    source folder may also hold virtualenvs and caches of gigabytes)."""
    import tomllib

    config = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
    tool = config.get("tool", {}).get("setuptools", {})
    roots = {name.split(".")[0] for name in tool.get("packages", [])} | set(tool.get("package-dir", {}).values())
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyi")
    target.mkdir(parents=True)
    for name in sorted(roots):
        if name and (source / name).is_dir():
            shutil.copytree(source / name, target / name, ignore=skip)
    for path in source.iterdir():
        if path.is_file() and (path.name == "pyproject.toml" or path.name.upper().startswith(("README", "LICENSE"))):
            shutil.copy2(path, target / path.name)


def wheel_requirements(meta: Any, extras: tuple[str, ...] = ("app",)) -> list[str]:
    """The requirements of the wheel with `extras`, its own extras expanded (`e5-omni[index]` in [app]), as lines
    for requirements.txt. Markers are evaluated for the extras here and dropped."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    own = canonicalize_name(meta["Name"])
    reqs = [Requirement(line) for line in meta.get_all("Requires-Dist") or []]
    wanted, lines, seen = set(extras), [], set()
    changed = True
    while changed:  # the closure of extras requested through self-references
        changed = False
        for req in reqs:
            if canonicalize_name(req.name) == own and _applies(req, wanted) and not req.extras <= wanted:
                wanted |= req.extras
                changed = True
    for req in reqs:
        if canonicalize_name(req.name) == own or not _applies(req, wanted):
            continue
        line = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return lines


def _applies(req: Any, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in extras | {""})


def requirements_txt(model_id: str, pins: dict[str, str], wheel: Path | None = None) -> str:
    """requirements.txt of the Space: the model's pins, then what this e5-omni needs with [app] (from `wheel`'s
    metadata, else this install's). Everything listed comes from a package index; e5-omni itself is the staged
    wheel, which app.py loads."""
    version = metadata.version("e5-omni")
    if wheel is not None:
        meta = check_wheel(wheel, version)["metadata"]
    else:
        meta = metadata.metadata("e5-omni")
    lines = [f"# the requirements of {model_id} (its config_sentence_transformers.json)"]
    lines += [f"{name}{spec}" for name, spec in pins.items()]
    lines += [
        f"# e5-omni {version} with [app]: its requirements; the package itself is {WHEEL_DIR}/{wheel_name(version)}",
        "# (in this Space, loaded by app.py: no package index has this version)",
    ]
    lines += wheel_requirements(meta)
    return "\n".join(lines) + "\n"


APP_TEMPLATE = '''"""The search page of {model_id}: e5omni's app over the bundled corpus/ (indexed on start-up)."""

import hashlib
import os
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

HERE = Path(__file__).resolve().parent
WHEEL = HERE / {wheel!r}
WHEEL_SHA256 = {wheel_sha256!r}


def use_staged_wheel() -> None:
    """Put e5-omni from the wheel committed with this Space first on the import path, after checking its sha256
    (requirements.txt installs its requirements; no package index has this version of e5-omni itself)."""
    data = WHEEL.read_bytes()
    if hashlib.sha256(data).hexdigest() != WHEEL_SHA256:
        raise SystemExit(f"{{WHEEL.name}} is not the wheel this Space was published with (sha256 differs)")
    target = Path(tempfile.gettempdir()) / f"e5omni-wheel-{{WHEEL_SHA256[:16]}}"
    if not (target / ".complete").is_file():
        with zipfile.ZipFile(WHEEL) as archive:
            archive.extractall(target)
        (target / ".complete").write_text(WHEEL_SHA256)
    sys.path.insert(0, str(target))


use_staged_wheel()

from e5omni.app.space import run_space  # noqa: E402

MODEL_ID = {model_id!r}
REVISION = {revision!r}  # pin a commit sha here for a Space whose results cannot change under it

if __name__ == "__main__":
    # Spaces route their public URL to port 7860 of the container; locally, `e5omni app` binds 127.0.0.1.
    run_space(MODEL_ID, REVISION, corpus="corpus", title={title!r}, host="0.0.0.0", port=7860)
'''


def space_readme(space_id: str, model_id: str, title: str, n_files: int, demo: bool) -> str:
    import gradio
    import yaml

    meta = {
        "title": title[:30],
        "emoji": "🔎",
        "colorFrom": "indigo",
        "colorTo": "blue",
        "sdk": "gradio",
        "sdk_version": gradio.__version__,
        "python_version": "3.11",
        "app_file": "app.py",
        "pinned": False,
        "license": "mit",
        "models": [model_id],
        "short_description": f"Omni-modal search with {model_id.split('/')[-1]}"[:60],
    }
    corpus = (
        "the bundled demo corpus: coloured shapes you can see (`corpus/images`), hear (`corpus/sounds`: pitch is the "
        "colour, beeps count the corners), watch move (`corpus/clips`) and read (`corpus/captions`)"
        if demo
        else "the files in `corpus/`"
    )
    return (
        "---\n"
        + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
        + "---\n\n"
        + f"# {title}\n\n"
        + f"Search {corpus} ({n_files} items) with [`{model_id}`](https://huggingface.co/{model_id}): type a "
        "sentence, drop an image, a sound or a clip, or several at once (one mixed query). Results show the cosine "
        "and the calibrated score (cos / tau(q, d)); click a result to search with it.\n\n"
        "The corpus is indexed when the Space starts. To search your own files on your machine:\n\n"
        "```bash\n"
        f"pip install '{WHEEL_DIR}/{wheel_name()}[app]'   # from a clone of this Space\n"
        f"e5omni index {model_id} my-photos/ --out my-index\n"
        "e5omni app my-index --source my-photos/        # http://127.0.0.1:7860\n"
        "```\n"
    )


def _corpus_files(corpus: Path) -> list[tuple[str, Path]]:
    """(relative path, file) of a user corpus folder, refusing what a Space should not carry."""
    allowed = _corpus_extensions()
    files, problems, total = [], [], 0
    for root, dirs, names in os.walk(corpus):
        root_path = Path(root)
        for d in list(dirs):
            if (root_path / d).is_symlink():
                problems.append(f"{(root_path / d).relative_to(corpus)}/: a symlinked folder")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (root_path / d).is_symlink())
        for name in sorted(names):
            path = root_path / name
            rel = path.relative_to(corpus).as_posix()
            if name.startswith("."):
                continue
            if path.is_symlink() or not path.is_file():
                problems.append(f"{rel}: not a regular file (symlink, FIFO, ...)")
            elif path.suffix.lower() not in allowed:
                problems.append(f"{rel}: not a medium the index embeds ({', '.join(sorted(allowed))})")
            else:
                total += path.stat().st_size
                files.append((rel, path))
    if problems:
        raise DisallowedFileError(
            "refusing to put these corpus files in the Space:\n  " + "\n  ".join(problems),
            path=problems[0].split(":")[0],
        )
    if not files:
        raise IncompleteFolderError(f"{corpus} holds no image, audio, video or .txt file", path=str(corpus))
    if len(files) > MAX_CORPUS_FILES or total > MAX_CORPUS_BYTES:
        raise DisallowedFileError(
            f"{corpus} holds {len(files)} files, {total / 2**20:.1f} MiB; a Space's demo corpus is at most "
            f"{MAX_CORPUS_FILES} files and {MAX_CORPUS_BYTES >> 20} MiB",
            path=str(corpus),
        )
    return files


def stage_space(
    space_id: str,
    model_id: str,
    *,
    model_folder: str | os.PathLike | None = None,
    revision: str = "main",
    corpus: str | os.PathLike | None = None,
    title: str | None = None,
    token: str | None = None,
    wheel: str | os.PathLike | None = None,
) -> list[StagedFile]:
    """The files of the Space commit (sorted by path). No network. `wheel`: the e5-omni wheel to ship (default:
    built from this install's source, see `package_wheel`)."""
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(space_id)
    validate_repo_id(model_id)
    title = title or f"{model_id.split('/')[-1]} search"
    staged: list[StagedFile] = []
    if corpus is None:
        from e5omni.app.demo import write_demo_corpus

        with tempfile.TemporaryDirectory(prefix="e5omni-space-") as tmp:
            written = write_demo_corpus(Path(tmp) / "corpus")
            staged += [_file(f"corpus/{p.relative_to(Path(tmp) / 'corpus').as_posix()}", p) for p in written]
    else:
        staged += [_file(f"corpus/{rel}", path) for rel, path in _corpus_files(Path(corpus))]
    n_files = len(staged)
    built = package_wheel(wheel)
    shipped = _file(f"{WHEEL_DIR}/{built.name}", built)
    staged.append(shipped)
    app = APP_TEMPLATE.format(
        model_id=model_id, revision=revision, title=title, wheel=shipped.path, wheel_sha256=shipped.sha256
    )
    staged.append(_generated("app.py", app))
    staged.append(_generated("requirements.txt", requirements_txt(model_id, model_requirements(model_folder), built)))
    staged.append(_generated("README.md", space_readme(space_id, model_id, title, n_files, corpus is None)))
    token = resolve_token(token)
    for item in staged:
        text = item.data.decode("utf-8", "replace") if item.path.endswith((".txt", ".py", ".md")) else ""
        if item.path.endswith(".whl"):  # the wheel's files, decompressed: a token in the source tree is refused too
            with zipfile.ZipFile(io.BytesIO(item.data)) as archive:
                inner = b"\n".join(archive.read(n) for n in archive.namelist())
            text = inner.decode("utf-8", "replace")
            if token and token.encode() in inner:
                raise SecretInFolderError(
                    f"refusing to publish {item.path}: it contains an access token", path=item.path
                )
        if (token and token.encode() in item.data) or _TOKEN_RE.search(text):
            raise SecretInFolderError(f"refusing to publish {item.path}: it contains an access token", path=item.path)
    return sorted(staged, key=lambda f: f.path)


def push_space(
    staged: list[StagedFile],
    space_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = SPACE_COMMIT_MESSAGE,
    dry_run_dir: str | os.PathLike | None = None,
    api: Any = None,
    verbose: bool = True,
) -> PushResult:
    """Publish the staged Space in one `create_commit` on top of the head just read (stale files deleted)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    entries = tuple(f.manifest_entry() for f in staged)
    if dry_run_dir is not None:
        out = write_staged(staged, dry_run_dir)
        if verbose:
            print(f"dry run: the Space {space_id} would get {len(staged)} files in one commit; staged in {out}")
        return PushResult(repo_id=space_id, revision="main", files=entries, dry_run_dir=out)
    token = resolve_token(token)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    _hub_call(
        "create_repo",
        api.create_repo,
        token,
        space_id,
        repo_type="space",
        space_sdk="gradio",
        private=private,
        exist_ok=True,
    )
    info = _hub_call("repo_info", api.repo_info, token, space_id, repo_type="space", revision="main", missing_ok=True)
    if info is _MISSING:
        raise HubError(f"the Space {space_id} has no main branch", "repo_info", 404)
    head = getattr(info, "sha", None)
    remote = _hub_call("list_repo_files", api.list_repo_files, token, space_id, repo_type="space", revision=head)
    keep = {f.path for f in staged} | {".gitattributes"}
    deleted = tuple(sorted(p for p in remote if p not in keep))
    operations: list[Any] = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=f.data) for f in staged]
    operations += [CommitOperationDelete(path_in_repo=p) for p in deleted]
    commit = _hub_call(
        "create_commit",
        api.create_commit,
        token,
        space_id,
        repo_type="space",
        operations=operations,
        commit_message=commit_message,
        revision="main",
        parent_commit=head,
    )
    result = PushResult(
        repo_id=space_id,
        revision="main",
        files=entries,
        commit_oid=getattr(commit, "oid", None),
        commit_url=getattr(commit, "commit_url", None),
        parent_commit=head,
        deleted=deleted,
    )
    if verbose:
        print(f"Space: {result}")
    return result
