"""Publish an e5-omni folder to the Hugging Face Hub in one atomic commit, and verify what was committed.

    result = push_folder("out/model", "me/e5-omni-ft", model_card_context={"metrics": metrics})
    verify_push(model, result.repo_id, result.commit_oid)          # download that commit, compare embeddings

Why one `create_commit` and not `upload_folder`: `upload_folder` may split a big folder into several commits, and a
failure in the middle leaves a repo whose weights and code disagree. `create_commit` with every file is atomic on the
Hub: the new revision has all files or the old revision stays. `parent_commit` is the head of the target revision read
just before committing, so a concurrent push makes ours fail (HTTP 412 -> `ConcurrentUpdateError`) instead of silently
overwriting it. Re-running after any failure is safe: nothing partial was committed, the head is read again, and files
already uploaded are not sent twice.

What is committed (the "staged" set, identical in a dry run and a real push):
- the folder's files, after checks: only safetensors, JSON, Python, Markdown and tokenizer files (`.txt`, `.jinja`,
  sentencepiece models); pickles (`.bin .pt .pth .pkl .pickle .ckpt`, `training_args.bin`) and every other kind are
  refused with a typed error naming the file; JSON must parse, safetensors headers must read, text must be UTF-8;
  no code reference to another repo (`owner/repo--module` in `auto_map`, modules.json or `.py` files), and every
  code module that `auto_map`, modules.json or a relative import names must be in the folder;
- `calibration.json`: the learned temperatures and whitening statistics in readable form (`model_card.calibration`);
- `README.md`: the model card (`model_card.render_model_card`), unless the folder brings its own README and no
  card context is given (so a reviewed dry-run folder can be pushed as it is);
- `manifest.json`: path, size and sha256 of every other staged file.
Files present in the target revision but not staged are deleted in the same commit (`delete_stale=True`), so a
stale shard index or an old `pytorch_model.bin` cannot survive next to the new weights.

Tokens: taken from the `token` argument or `HF_TOKEN` (otherwise huggingface_hub's stored login is used). The token
is passed to `HfApi` calls and nowhere else: no log line, staged file, manifest, result or exception contains it.
Errors from the Hub are re-raised as `HubError` with every token-like string redacted and without the original
exception chained (a chained exception would print the unredacted message in the traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Suffixes of pickle-based formats: loading them runs arbitrary code, so they are never published.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: File kinds a repo of ours may contain.
ALLOWED_SUFFIXES = {
    ".safetensors": "weights",
    ".json": "json",
    ".py": "code",
    ".md": "text",
    ".txt": "text",  # merges.txt, vocab.txt, added tokens
    ".jinja": "text",  # chat templates
}
#: Tokenizer files that are neither text nor pickles (sentencepiece protobufs), allowed by exact name.
ALLOWED_BINARY_NAMES = {"tokenizer.model", "spiece.model", "sentencepiece.bpe.model"}
#: Without these a repo would not serve both entry paths (sentence-transformers would fall back to mean pooling).
REQUIRED_FILES = ("config.json", "modules.json", "config_sentence_transformers.json")
#: Files the push writes itself; a copy in the folder is replaced (they are derived from the weights and files).
GENERATED = ("calibration.json", "manifest.json")
MANIFEST_FORMAT = "e5omni-manifest/1"
DEFAULT_COMMIT_MESSAGE = "Publish e5-omni model: weights, code, calibration and model card"

#: `owner/repo--module`: transformers' syntax for code that lives in another repo.
_REMOTE_CODE_RE = re.compile(r"[\w.-]+/[\w.-]+--[\w.]+")
#: What Hugging Face access tokens look like (used to refuse files that contain one and to redact messages).
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")
_RELATIVE_IMPORT_RE = re.compile(r"^\s*from\s+\.([A-Za-z_]\w*)\s+import\b", re.MULTILINE)
_CHUNK = 8 << 20


# ----------------------------------------------------------------------------------------------------------- errors
class PublishError(Exception):
    """Base class of every refusal or failure of a push."""


class FolderCheckError(PublishError):
    """A file of the folder cannot be published. `path` is the first offending file, `problems` all of them."""

    def __init__(self, message: str, path: str | None = None, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.path = path
        self.problems = problems or []


class PickleFileError(FolderCheckError):
    """A pickle-based file (.bin, .pt, .pth, .pkl, .pickle, .ckpt): loading it would run arbitrary code."""


class DisallowedFileError(FolderCheckError):
    """A file kind outside the allow-list (safetensors, JSON, Python, Markdown, tokenizer files)."""


class InvalidFileError(FolderCheckError):
    """A file whose content does not match its kind (JSON that does not parse, a broken safetensors header...)."""


class RemoteCodeReferenceError(FolderCheckError):
    """Code that points at another repo (`owner/repo--module`): the published repo would not be self-contained."""


class MissingCodeFileError(FolderCheckError):
    """`auto_map`, modules.json or a relative import names a code module that is not in the folder."""


class SecretInFolderError(FolderCheckError):
    """A file contains an access token."""


class IncompleteFolderError(FolderCheckError):
    """Not an e5-omni folder: no config.json of model_type e5omni, or no alignment state in the weights."""


class HubError(PublishError):
    """A Hub call failed. The message is redacted; `operation` and `status_code` say which call and how."""

    def __init__(self, message: str, operation: str, status_code: int | None = None):
        super().__init__(message)
        self.operation = operation
        self.status_code = status_code


class ConcurrentUpdateError(HubError):
    """The target revision moved between reading its head and committing: someone else pushed. Re-run to retry."""


class VisibilityError(PublishError):
    """`private=True` was asked for, but the repo already exists and is public."""


class VerificationError(PublishError):
    """The committed files do not reload to the pushed model's embeddings, or do not match the manifest."""


# ---------------------------------------------------------------------------------------------------------- staging
@dataclass(frozen=True)
class StagedFile:
    """One file of the commit: from the folder (`source`) or generated (`data`)."""

    path: str
    size: int
    sha256: str
    source: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def manifest_entry(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def _generated(path: str, data: bytes) -> StagedFile:
    return StagedFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), data=data)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode("utf-8")


def resolve_token(token: str | None = None) -> str | None:
    """The token to use: the argument, else `HF_TOKEN`, else None (huggingface_hub then uses the stored login)."""
    return token or os.environ.get("HF_TOKEN") or None


def redact(text: str, token: str | None = None) -> str:
    """`text` with the token and anything token-like (hf_..., Bearer ...) replaced by `***`."""
    if token:
        text = text.replace(token, "***")
    text = _TOKEN_RE.sub("hf_***", text)
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def _hash_and_scan(path: Path, token: str | None) -> tuple[str, int, bool]:
    """(sha256, size, contains the token) in one streaming pass (weights can be tens of GB)."""
    digest = hashlib.sha256()
    needle = token.encode() if token else b""
    found = False
    tail = b""
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if needle and not found:
                window = tail + chunk
                found = needle in window
                tail = window[-(len(needle) - 1) :] if len(needle) > 1 else b""
    return digest.hexdigest(), size, found


def _check_content(path: Path, kind: str) -> tuple[str, str] | None:
    """Content matches kind; returns (error class name, reason) or None. Text files are read whole (they are small)."""
    if kind == "weights":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # any parse failure means "not a safetensors file"
            return "InvalidFileError", f"not a readable safetensors file ({type(err).__name__})"
        return None
    if kind == "binary":
        with path.open("rb") as handle:
            head = handle.read(4)
        if head[:1] == b"\x80" or head == b"PK\x03\x04":
            return "PickleFileError", "looks like a pickle / torch zip archive"
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return "InvalidFileError", "not UTF-8 text"
    if kind == "json":
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            return "InvalidFileError", f"invalid JSON ({err.msg} at line {err.lineno})"
    if _TOKEN_RE.search(text):
        return "SecretInFolderError", "contains something that looks like a Hugging Face access token"
    return None


def _kind_of(rel: str) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    if name in ALLOWED_BINARY_NAMES:
        return "binary"
    return ALLOWED_SUFFIXES.get(Path(name).suffix.lower())


def _walk(folder: Path) -> tuple[list[tuple[str, Path]], list[str], list[tuple[str, str, str]]]:
    """(files to consider, skipped hidden paths, problems). Hidden entries (.git, .cache, .gitattributes) are skipped:
    they are tool metadata, never model files. Symlinked folders are refused rather than followed."""
    files, skipped, problems = [], [], []
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        for d in sorted(dirs):
            rel = (root_path / d).relative_to(folder).as_posix()
            if d.startswith("."):
                skipped.append(rel + "/")
            elif (root_path / d).is_symlink():
                problems.append(("DisallowedFileError", rel, "a symlinked folder (copy it into the folder instead)"))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (root_path / d).is_symlink())
        for name in sorted(names):
            rel = (root_path / name).relative_to(folder).as_posix()
            if name.startswith("."):
                skipped.append(rel)
            else:
                files.append((rel, root_path / name))
    return files, skipped, problems


def _code_problems(folder: Path, staged_paths: set[str]) -> list[tuple[str, str, str]]:
    """Remote-code references and code modules that would be missing from the repo."""
    problems = []

    def need_module(module: str, where: str, prefix: str = "") -> None:
        path = prefix + module.replace(".", "/") + ".py"
        if path not in staged_paths:
            problems.append(("MissingCodeFileError", where, f"names code module {module!r} but {path} is not staged"))

    for rel in sorted(staged_paths):
        if not rel.endswith(".json"):
            continue
        try:
            data = json.loads((folder / rel).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # reported by the content check
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if isinstance(auto_map, dict):
            for auto_class, ref in auto_map.items():
                for item in ref if isinstance(ref, list) else [ref]:
                    if not isinstance(item, str):
                        continue
                    if "--" in item:
                        problems.append(
                            ("RemoteCodeReferenceError", rel, f"auto_map[{auto_class!r}] = {item!r} is in another repo")
                        )
                    elif "." in item:
                        need_module(item.rsplit(".", 1)[0], rel)
        if rel == "modules.json" and isinstance(data, list):
            for module in data:
                kind = str(module.get("type", "")) if isinstance(module, dict) else ""
                if "--" in kind or _REMOTE_CODE_RE.search(kind):
                    problems.append(("RemoteCodeReferenceError", rel, f"module type {kind!r} is in another repo"))
                elif kind and not kind.startswith("sentence_transformers.") and "." in kind:
                    need_module(kind.rsplit(".", 1)[0], rel)
    for rel in sorted(p for p in staged_paths if p.endswith(".py")):
        text = (folder / rel).read_text(encoding="utf-8", errors="replace")
        match = _REMOTE_CODE_RE.search(text)
        if match:
            problems.append(("RemoteCodeReferenceError", rel, f"refers to code in another repo: {match.group(0)!r}"))
        prefix = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        for module in _RELATIVE_IMPORT_RE.findall(text):
            need_module(module, rel, prefix)
    return problems


def _raise_problems(problems: list[tuple[str, str, str]]) -> None:
    if not problems:
        return
    classes = {cls.__name__: cls for cls in FolderCheckError.__subclasses__()}
    name, path, _ = problems[0]
    lines = "\n".join(f"  {p}: {reason}" for _, p, reason in problems)
    count = len({p for _, p, _ in problems})
    message = f"refusing to publish: {count} file(s) cannot go to the Hub\n{lines}"
    raise classes[name](message, path=path, problems=[(p, reason) for _, p, reason in problems])


def stage_folder(
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model_card_context: dict[str, Any] | None = None,
    token: str | None = None,
) -> list[StagedFile]:
    """Check `folder` and return the exact list of files one commit would carry (sorted by path).

    No network. Raises a `FolderCheckError` subclass naming the offending file(s) before anything is sent.
    """
    from e5omni.model_card import CalibrationError, calibration_summary, context_from_folder, render_model_card

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    files, skipped, problems = _walk(folder)
    if skipped:
        logger.info("not publishing hidden paths: %s", ", ".join(skipped))
    keep_readme = (folder / "README.md").is_file() and model_card_context is None
    staged: list[StagedFile] = []
    for rel, path in files:
        name = rel.rsplit("/", 1)[-1]
        if rel in GENERATED or (rel == "README.md" and not keep_readme):
            continue
        if name.lower().endswith(PICKLE_SUFFIXES):
            problems.append(("PickleFileError", rel, "pickle-based format: loading it runs arbitrary code"))
            continue
        kind = _kind_of(rel)
        if kind is None:
            problems.append(
                (
                    "DisallowedFileError",
                    rel,
                    "not an allowed kind (safetensors, JSON, Python, Markdown, tokenizer .txt/.jinja/.model)",
                )
            )
            continue
        if not path.is_file():
            problems.append(("DisallowedFileError", rel, "not a regular file"))
            continue
        bad = _check_content(path, kind)
        if bad:
            problems.append((bad[0], rel, bad[1]))
            continue
        sha, size, has_token = _hash_and_scan(path, token)
        if has_token:
            problems.append(("SecretInFolderError", rel, "contains the access token used for this push"))
            continue
        staged.append(StagedFile(path=rel, size=size, sha256=sha, source=path))
    staged_paths = {f.path for f in staged}
    problems += _code_problems(folder, staged_paths)
    _raise_problems(problems)
    missing = [name for name in REQUIRED_FILES if name not in staged_paths]
    if missing or not any(p.endswith(".safetensors") for p in staged_paths):
        raise IncompleteFolderError(
            f"{folder} lacks {missing or 'safetensors weights'}: every e5-omni repo serves both entry paths "
            "(AutoModel and SentenceTransformer); write the folder with e5omni.convert.save_hub_folder",
            path=(missing or ["model.safetensors"])[0],
        )

    try:
        calibration = calibration_summary(folder)
    except (CalibrationError, json.JSONDecodeError) as err:
        raise IncompleteFolderError(
            f"{folder} is not a publishable e5-omni folder: {err}", path="config.json"
        ) from None
    staged.append(_generated("calibration.json", _json_bytes(calibration)))
    if not keep_readme:
        context = context_from_folder(
            folder, calibration=calibration, **{"repo_id": repo_id, **(model_card_context or {})}
        )
        staged.append(_generated("README.md", render_model_card(context).encode("utf-8")))
    else:
        logger.info("keeping the folder's own README.md (pass model_card_context to render the model card)")
    for item in staged:  # the card context is caller data: it must not smuggle a token into the README either
        if item.data is not None and (
            (token and token.encode() in item.data) or _TOKEN_RE.search(item.data.decode("utf-8", "replace"))
        ):
            raise SecretInFolderError(
                f"refusing to publish: generated {item.path} would contain an access token "
                "(it came in through model_card_context)",
                path=item.path,
            )
    staged.sort(key=lambda f: f.path)
    manifest = {"format": MANIFEST_FORMAT, "files": [f.manifest_entry() for f in staged]}
    staged.append(_generated("manifest.json", _json_bytes(manifest)))
    staged.sort(key=lambda f: f.path)
    return staged


def write_staged(staged: Iterable[StagedFile], out: str | os.PathLike) -> Path:
    """Write the staged files to `out` (must be empty or absent): the exact content of the commit."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; a dry run writes into a fresh folder so it holds only the commit")
    out.mkdir(parents=True, exist_ok=True)
    for item in staged:
        target = out / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.data is not None:
            target.write_bytes(item.data)
        else:
            shutil.copyfile(item.source, target)
    return out


def check_manifest(folder: str | os.PathLike) -> list[str]:
    """Problems between `folder` and its manifest.json (missing, extra or changed files); [] when they agree."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    expected = {entry["path"]: entry for entry in manifest["files"]}
    files, _, _ = _walk(folder)
    present = {rel: path for rel, path in files if rel != "manifest.json"}
    problems = [f"missing: {p}" for p in sorted(set(expected) - set(present))]
    problems += [f"not in the manifest: {p}" for p in sorted(set(present) - set(expected))]
    for rel in sorted(set(expected) & set(present)):
        sha, size, _ = _hash_and_scan(present[rel], None)
        if (sha, size) != (expected[rel]["sha256"], expected[rel]["size"]):
            problems.append(f"changed: {rel} (sha256 {sha[:12]}.. != {expected[rel]['sha256'][:12]}..)")
    return problems


# ------------------------------------------------------------------------------------------------------------- push
@dataclass(frozen=True)
class PushResult:
    """What a push did. Holds no token. `commit_oid` is None for a dry run."""

    repo_id: str
    revision: str
    files: tuple[dict[str, Any], ...]
    commit_oid: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None
    parent_commit: str | None = None
    deleted: tuple[str, ...] = ()
    dry_run_dir: Path | None = None

    @property
    def dry_run(self) -> bool:
        return self.dry_run_dir is not None

    def __str__(self) -> str:
        if self.dry_run:
            return f"dry run of {self.repo_id}@{self.revision}: {len(self.files)} files staged in {self.dry_run_dir}"
        where = self.pr_url or self.commit_url
        return (
            f"pushed {len(self.files)} files to {self.repo_id}@{self.revision} in commit {self.commit_oid} ({where}); "
            f"pin it with revision={self.commit_oid!r}"
        )


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


_MISSING = object()


def _hub_call(operation: str, fn: Callable[..., Any], token: str | None, *args, missing_ok: bool = False, **kwargs):
    """Call `fn(*args, token=token, **kwargs)`; on failure raise a redacted `HubError` with no chained exception.

    With `missing_ok`, a RevisionNotFoundError returns `_MISSING` instead (used to detect a branch to create).
    """
    from huggingface_hub.errors import RevisionNotFoundError

    failure: HubError | None = None
    try:
        return fn(*args, token=token, **kwargs)
    except RevisionNotFoundError:
        if not missing_ok:
            failure = HubError(f"{operation} failed: revision not found", operation, 404)
        else:
            return _MISSING
    except Exception as err:  # every failure is re-raised, typed and redacted, below
        status = _status(err)
        message = f"{operation} failed: {type(err).__name__}: {redact(str(err), token)}"
        cls = ConcurrentUpdateError if status in (409, 412) else HubError
        if cls is ConcurrentUpdateError:
            message += "\nthe target revision moved since its head was read (a concurrent push?); re-run to retry"
        failure = cls(message, operation, status)
    # Raised outside the except block so that neither __cause__ nor __context__ holds the unredacted error.
    raise failure


def _describe_plan(repo_id: str, revision: str, staged: list[StagedFile], create_pr: bool, private: bool) -> str:
    lines = [
        f"create_repo(repo_id={repo_id!r}, private={private}, exist_ok=True)",
        f"create_commit(repo_id={repo_id!r}, revision={revision!r}, create_pr={create_pr}, "
        f"parent_commit=<head of {revision!r} when pushing>) with {len(staged)} operations:",
    ]
    width = max(len(f.path) for f in staged)
    lines += [f"  + {f.path:<{width}}  {f.size:>12,d} B  sha256:{f.sha256[:16]}" for f in staged]
    lines.append("  - (files of the target revision that are not staged, except .gitattributes)")
    return "\n".join(lines)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    commit_description: str | None = None,
    dry_run_dir: str | os.PathLike | None = None,
    api: Any = None,
    model_card_context: dict[str, Any] | None = None,
    delete_stale: bool = True,
    verbose: bool = True,
) -> PushResult:
    """Publish `folder` (a `save_hub_folder` output) to `repo_id` in one commit; see the module docstring.

    - `revision`: branch to commit to (default main); created from main when missing (not with `create_pr`).
      `refs/pr/N` commits into an open pull request.
    - `create_pr`: open a pull request against `revision` instead of committing to it.
    - `dry_run_dir`: write the staged files (+ manifest.json) there, print the operations, call nothing.
    - `api`: an `HfApi` (tests inject a recording fake); default `HfApi()`.
    - `model_card_context`: extra context for the card (metrics, training, base_model, datasets, ...).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    if not commit_message or not commit_message.strip():
        raise ValueError("commit_message must not be empty")
    if dry_run_dir is not None and Path(dry_run_dir).resolve().is_relative_to(Path(folder).resolve()):
        # inside the folder, the next push of that folder would publish the staged copy a second time
        raise ValueError("dry_run_dir must be outside the folder being pushed")
    if dry_run_dir is not None and Path(dry_run_dir).is_dir() and any(Path(dry_run_dir).iterdir()):
        raise FileExistsError(f"{dry_run_dir} is not empty; a dry run writes into a fresh folder")
    token = resolve_token(token)
    target = revision or "main"
    staged = stage_folder(folder, repo_id=repo_id, model_card_context=model_card_context, token=token)
    entries = tuple(f.manifest_entry() for f in staged)
    plan = _describe_plan(repo_id, target, staged, create_pr, private)

    if dry_run_dir is not None:
        out = write_staged(staged, dry_run_dir)
        if verbose:
            print(f"dry run: nothing was sent. One commit would carry:\n{plan}\nstaged folder: {out}")
        logger.info("dry run: staged %d files in %s", len(staged), out)
        return PushResult(repo_id=repo_id, revision=target, files=entries, dry_run_dir=out)

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    repo_url = _hub_call("create_repo", api.create_repo, token, repo_id, private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", None) or repo_id

    info = _hub_call("repo_info", api.repo_info, token, repo_id, revision=target, missing_ok=True)
    if info is _MISSING:
        if create_pr or target.startswith("refs/"):
            raise HubError(f"revision {target!r} does not exist in {repo_id}", "repo_info", 404)
        logger.info("creating branch %s in %s", target, repo_id)
        _hub_call("create_branch", api.create_branch, token, repo_id, branch=target, exist_ok=True)
        info = _hub_call("repo_info", api.repo_info, token, repo_id, revision=target)
    if private and getattr(info, "private", None) is False:
        raise VisibilityError(
            f"refusing to push: private=True was asked for, but {repo_id} already exists and is public. "
            "Change its visibility first, or push without --private."
        )
    head = getattr(info, "sha", None)

    deleted: tuple[str, ...] = ()
    if delete_stale and head:
        remote = _hub_call("list_repo_files", api.list_repo_files, token, repo_id, revision=head)
        keep = {f.path for f in staged} | {".gitattributes"}
        deleted = tuple(sorted(p for p in remote if p not in keep))
    # Fresh operation objects on every attempt: huggingface_hub mutates them and refuses to reuse committed ones.
    operations: list[Any] = [
        CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=f.data if f.data is not None else str(f.source))
        for f in staged
    ]
    for op, f in zip(operations, staged):  # the bytes sent are the bytes the manifest describes
        if op.upload_info.sha256.hex() != f.sha256:
            raise PublishError(f"{f.path} changed while staging the push; re-run it")
    operations += [CommitOperationDelete(path_in_repo=p) for p in deleted]
    if deleted:
        logger.info("deleting %d stale files in the same commit: %s", len(deleted), ", ".join(deleted))
    logger.info("committing %d files to %s@%s (parent %s)", len(staged), repo_id, target, head)
    commit = _hub_call(
        "create_commit",
        api.create_commit,
        token,
        repo_id,
        operations=operations,
        commit_message=commit_message,
        commit_description=commit_description or _commit_description(staged),
        revision=target,
        create_pr=create_pr,
        parent_commit=head,
    )
    result = PushResult(
        repo_id=repo_id,
        revision=target,
        files=entries,
        commit_oid=getattr(commit, "oid", None),
        commit_url=getattr(commit, "commit_url", None),
        pr_url=getattr(commit, "pr_url", None),
        parent_commit=head,
        deleted=deleted,
    )
    logger.info("%s", result)
    if verbose:
        print(result)
    return result


def _commit_description(staged: list[StagedFile]) -> str:
    """Commit body: the calibration at a glance and the weights' sha256, so the history is readable on its own."""
    by_path = {f.path: f for f in staged}
    lines = ["Published with e5-omni e5omni.publish (one atomic commit)."]
    calibration = by_path.get("calibration.json")
    if calibration is not None and calibration.data is not None:
        summary = json.loads(calibration.data)
        taus = ", ".join(f"{m}={v:g}" for m, v in summary["temperatures"].items())
        lines.append(f"temperatures: {taus}; whitening: {'on' if summary['whitening']['enabled'] else 'off'}")
    lines += [f"{f.path}: sha256 {f.sha256}" for f in staged if f.path.endswith(".safetensors")]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- verify
def probe_items(modalities: Iterable[str]) -> dict[str, Any]:
    """Fixed, seeded probes: one per modality the model accepts, plus a mixed item. Deterministic across runs."""
    import numpy as np
    from PIL import Image

    modalities = set(modalities)
    rng = np.random.default_rng(20260107)
    image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    t = np.arange(16000) / 16000
    audio = {"array": (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), "sampling_rate": 16000}
    video = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    probes: dict[str, Any] = {"text": "a red circle in the top left corner"}
    if "image" in modalities:
        probes["image"] = {"image": image}
    if "audio" in modalities:
        probes["audio"] = {"audio": audio}
    if "video" in modalities:
        probes["video"] = {"video": video}
    mixed = {"text": "a caption with its picture and sound"}
    mixed.update({m: v for m, v in (("image", image), ("audio", audio), ("video", video)) if m in modalities})
    probes["mixed"] = mixed
    return probes


@dataclass(frozen=True)
class VerifyResult:
    """Max abs embedding difference per entry path and probe (`"query:text"` etc. for queries)."""

    folder: Path
    max_abs_diff: dict[str, dict[str, float]]
    atol: float
    loaded_from: dict[str, str]
    manifest_problems: tuple[str, ...] = ()

    @property
    def max_diff(self) -> float:
        return max(max(v.values()) for v in self.max_abs_diff.values())

    @property
    def ok(self) -> bool:
        return not self.manifest_problems and self.max_diff <= self.atol

    def __str__(self) -> str:
        probes = list(next(iter(self.max_abs_diff.values())))
        width = max(len(p) for p in probes)
        lines = [f"verified {self.folder}: {'OK' if self.ok else 'MISMATCH'} (max abs diff {self.max_diff:.2e}, "]
        lines[0] += f"tolerance {self.atol:.0e})"
        lines.append(f"  {'probe':<{width}}  " + "  ".join(f"{path:>21}" for path in self.max_abs_diff))
        for probe in probes:
            row = "  ".join(f"{self.max_abs_diff[path][probe]:>21.2e}" for path in self.max_abs_diff)
            lines.append(f"  {probe:<{width}}  {row}")
        lines += [f"  manifest: {p}" for p in self.manifest_problems]
        return "\n".join(lines)


def _load_reference(reference: Any):
    if isinstance(reference, (str, os.PathLike)):
        from modeling_e5omni import E5OmniModel

        return E5OmniModel.from_pretrained(reference)
    return reference


def _remote_code_model(folder: Path):
    """What `AutoModel.from_pretrained(folder, trust_remote_code=True)` gives a user without this package installed.

    In this process `modeling_e5omni` is registered with the Auto classes, and transformers then prefers the local
    class even with `trust_remote_code=True`; loading the class named by `auto_map` makes sure the *shipped* code runs.
    """
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cls = get_class_from_dynamic_module(config["auto_map"]["AutoModel"], str(folder))
    return cls.from_pretrained(str(folder))


def verify_folder(reference: Any, folder: str | os.PathLike, *, atol: float = 1e-5, verbose: bool = True):
    """Reload `folder` through both entry paths (remote code, as Hub users get it) and compare with `reference`.

    `reference` is the pushed model (an `E5OmniModel` with its processor set) or the local folder it was saved to.
    The reloads run in fp32 on CPU, so the 1e-5 tolerance holds for a CPU fp32 reference; after GPU / bf16 training
    pass the saved folder instead of the in-memory model.
    Probes: `probe_items` as documents, and the text and mixed probes as queries. Also checks manifest.json.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    folder = Path(folder)
    model = _load_reference(reference)
    probes = probe_items(model.config.modalities)
    names = list(probes)
    queries = {f"query:{k}": probes[k] for k in ("text", "mixed")}

    def embed(encode_document, encode_query) -> dict[str, torch.Tensor]:
        docs = encode_document(list(probes.values()))
        qs = encode_query(list(queries.values()))
        return {**dict(zip(names, docs)), **dict(zip(queries, qs))}

    expected = embed(model.encode_document, model.encode_query)
    auto = _remote_code_model(folder)
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    loaded_from = {"transformers": type(auto).__module__, "sentence-transformers": type(st[0]).__module__}
    for path, module in loaded_from.items():
        if not module.startswith("transformers_modules."):
            raise VerificationError(f"{path} loaded {module}, not the code shipped in {folder}")
    got = {
        "transformers": embed(auto.encode_document, auto.encode_query),
        "sentence-transformers": embed(
            lambda items: st.encode_document(items, convert_to_tensor=True),
            lambda items: st.encode_query(items, convert_to_tensor=True),
        ),
    }
    diffs = {
        path: {k: float((vectors[k].float().cpu() - expected[k].float().cpu()).abs().max()) for k in expected}
        for path, vectors in got.items()
    }
    manifest = tuple(check_manifest(folder)) if (folder / "manifest.json").is_file() else ()
    result = VerifyResult(
        folder=folder, max_abs_diff=diffs, atol=atol, loaded_from=loaded_from, manifest_problems=manifest
    )
    logger.info("%s", result)
    if verbose:
        print(result)
    return result


def verify_push(
    reference: Any,
    repo_id: str,
    commit: str,
    *,
    api: Any = None,
    token: str | None = None,
    download_dir: str | os.PathLike | None = None,
    atol: float = 1e-5,
    verbose: bool = True,
) -> VerifyResult:
    """Download exactly `commit` of `repo_id` (`snapshot_download(repo_id, revision=commit)`) and `verify_folder` it.

    Downloading by commit sha (not branch) checks what this push committed even if the branch has moved since.
    This downloads the full weights; `api` is an `HfApi` (tests inject a fake that materialises its recorded commit).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="e5omni-verify-") as tmp:
        # The folder name carries the commit: transformers caches remote code per folder name.
        target = Path(download_dir or tmp) / f"{repo_id.replace('/', '--')}-{commit[:12]}"
        local = _hub_call(
            "snapshot_download", api.snapshot_download, token, repo_id, revision=commit, local_dir=str(target)
        )
        return verify_folder(reference, Path(local), atol=atol, verbose=verbose)


# -------------------------------------------------------------------------------------------------------------- CLI
def add_push_parser(subparsers) -> argparse.ArgumentParser:
    """Add `e5omni push FOLDER --repo-id ID ...` to a `argparse` subparsers object."""
    p = subparsers.add_parser(
        "push",
        help="publish a saved model folder to the Hub in one atomic commit (or --dry-run it)",
        description=(
            "Publish FOLDER (weights, code, processor, sentence-transformers files) plus calibration.json, "
            "manifest.json and the model card in one commit. Pickles and code referencing other repos are refused."
        ),
    )
    p.add_argument("folder", help="a folder written by save_hub_folder / e5omni convert / the trainer")
    p.add_argument("--repo-id", required=True, help="owner/name on the Hub")
    p.add_argument("--revision", default=None, help="branch to commit to (default main; created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (refused if it exists public)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    p.add_argument(
        "--token",
        default=None,
        help="Hub token; prefer the HF_TOKEN environment variable (a command-line token shows in ps and history)",
    )
    p.add_argument("--dry-run", metavar="DIR", default=None, help="write the staged commit to DIR; send nothing")
    p.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    p.add_argument(
        "--card-context",
        metavar="JSON",
        default=None,
        help="JSON file with model-card context: metrics, training, loss, base_model, datasets, eval_dataset, ...",
    )
    p.add_argument(
        "--keep-stale-files", action="store_true", help="keep files of the target revision that are not in FOLDER"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="reload what was committed (downloads the commit; with --dry-run, the staged DIR) and compare embeddings",
    )
    p.set_defaults(func=run_push_command)
    return p


def run_push_command(args: argparse.Namespace) -> int:
    """The `e5omni push` command. Returns 0 on success, 1 on a failed verification, 2 on a refused push."""
    context = None
    if args.card_context:
        context = json.loads(Path(args.card_context).read_text(encoding="utf-8"))
        if not isinstance(context, dict):
            print("push: --card-context must hold a JSON object", file=sys.stderr)
            return 2
    token = args.token
    try:
        result = push_folder(
            args.folder,
            args.repo_id,
            revision=args.revision,
            private=args.private,
            create_pr=args.create_pr,
            token=token,
            commit_message=args.commit_message,
            dry_run_dir=args.dry_run,
            model_card_context=context,
            delete_stale=not args.keep_stale_files,
        )
        if args.verify:
            if result.dry_run:
                verified = verify_folder(args.folder, result.dry_run_dir)
            else:
                verified = verify_push(args.folder, result.repo_id, result.commit_oid, token=token)
            return 0 if verified.ok else 1
    except PublishError as err:
        print(f"push: {redact(str(err), resolve_token(token))}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "ConcurrentUpdateError",
    "DisallowedFileError",
    "FolderCheckError",
    "HubError",
    "IncompleteFolderError",
    "InvalidFileError",
    "MissingCodeFileError",
    "PickleFileError",
    "PublishError",
    "PushResult",
    "RemoteCodeReferenceError",
    "SecretInFolderError",
    "StagedFile",
    "VerificationError",
    "VerifyResult",
    "VisibilityError",
    "add_push_parser",
    "check_manifest",
    "probe_items",
    "push_folder",
    "redact",
    "resolve_token",
    "run_push_command",
    "stage_folder",
    "verify_folder",
    "verify_push",
    "write_staged",
]
