"""A Hub Space for a published model: the search page over a small bundled corpus, staged and pushed in one commit.

    staged = stage_space("me/e5-omni-search", "me/e5-omni", model_folder="out/model")
    push_space(staged, "me/e5-omni-search", dry_run_dir="staged-space")          # or a real push (api=HfApi())

What one Space commit holds (identical in a dry run and a push):

    README.md          Space metadata (sdk: gradio at the installed version, app_file, `models: [MODEL]` so the model
                       page lists the Space) and what the page does, how to run it locally
    app.py             loads MODEL at the pinned revision, indexes `corpus/` on start-up (`e5omni index`'s engine),
                       serves `e5omni app`'s page on 0.0.0.0:7860 (what Spaces expect; locally it binds 127.0.0.1)
    requirements.txt   the model's own requirements (its config_sentence_transformers.json) + e5-omni[app] at this
                       version + the media decoders
    corpus/...         the demo corpus (`e5omni.app.demo`: shapes as images, sounds, clips, captions), or the folder
                       given with `corpus=`: media and .txt files only, no symlinks, at most 500 files / 100 MB

The corpus is indexed on the Space rather than shipped as vectors: an index is only valid for the exact model it
was built with (its fingerprint), and the Space loads the model from the Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from e5omni.publish.errors import DisallowedFileError, HubError, IncompleteFolderError, SecretInFolderError
from e5omni.publish.push import _MISSING, PushResult, _hub_call
from e5omni.publish.stage import StagedFile, write_staged
from e5omni.publish.tokens import _TOKEN_RE, resolve_token

SPACE_COMMIT_MESSAGE = "Publish the e5-omni search Space"
MAX_CORPUS_FILES = 500
MAX_CORPUS_BYTES = 100 << 20


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


def requirements_txt(model_id: str, pins: dict[str, str]) -> str:
    from importlib import metadata

    version = metadata.version("e5-omni")
    lines = [f"# the requirements of {model_id} (its config_sentence_transformers.json), then the page's"]
    lines += [f"{name}{spec}" for name, spec in pins.items()]
    lines += [f"e5-omni[app]=={version}", "soundfile", "soxr", "av"]
    return "\n".join(lines) + "\n"


APP_TEMPLATE = '''"""The search page of {model_id}: e5omni's app over the bundled corpus/ (indexed on start-up)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

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
        "pip install 'e5-omni[app]'\n"
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
) -> list[StagedFile]:
    """The files of the Space commit (sorted by path). No network."""
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
    staged.append(_generated("app.py", APP_TEMPLATE.format(model_id=model_id, revision=revision, title=title)))
    staged.append(_generated("requirements.txt", requirements_txt(model_id, model_requirements(model_folder))))
    staged.append(_generated("README.md", space_readme(space_id, model_id, title, n_files, corpus is None)))
    token = resolve_token(token)
    for item in staged:
        text = item.data.decode("utf-8", "replace") if item.path.endswith((".txt", ".py", ".md")) else ""
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
