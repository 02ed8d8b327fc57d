"""Staging: check a folder and build the exact file list of one commit (no network), write it, check a manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e5omni.publish.errors import (
    DisallowedFileError,
    FolderCheckError,
    IncompleteFolderError,
    InvalidFileError,
    MissingCodeFileError,
    PickleFileError,
    RemoteCodeReferenceError,
    SecretInFolderError,
)
from e5omni.publish.tokens import _TOKEN_RE

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

#: `owner/repo--module`: transformers' syntax for code that lives in another repo.
_REMOTE_CODE_RE = re.compile(r"[\w.-]+/[\w.-]+--[\w.]+")
_RELATIVE_IMPORT_RE = re.compile(r"^\s*from\s+\.([A-Za-z_]\w*)\s+import\b", re.MULTILINE)
_CHUNK = 8 << 20

#: One refusal: the error class to raise, the offending path, the reason.
Problem = tuple[type[FolderCheckError], str, str]


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


def _check_content(path: Path, kind: str) -> tuple[type[FolderCheckError], str] | None:
    """Content matches kind; returns (error class, reason) or None. Text files are read whole (they are small)."""
    if kind == "weights":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # any parse failure means "not a safetensors file"
            return InvalidFileError, f"not a readable safetensors file ({type(err).__name__})"
        return None
    if kind == "binary":
        with path.open("rb") as handle:
            head = handle.read(4)
        if head[:1] == b"\x80" or head == b"PK\x03\x04":
            return PickleFileError, "looks like a pickle / torch zip archive"
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return InvalidFileError, "not UTF-8 text"
    if kind == "json":
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            return InvalidFileError, f"invalid JSON ({err.msg} at line {err.lineno})"
    if _TOKEN_RE.search(text):
        return SecretInFolderError, "contains something that looks like a Hugging Face access token"
    return None


def _kind_of(rel: str) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    if name in ALLOWED_BINARY_NAMES:
        return "binary"
    return ALLOWED_SUFFIXES.get(Path(name).suffix.lower())


def _walk(folder: Path) -> tuple[list[tuple[str, Path]], list[str], list[Problem]]:
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
                problems.append((DisallowedFileError, rel, "a symlinked folder (copy it into the folder instead)"))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (root_path / d).is_symlink())
        for name in sorted(names):
            rel = (root_path / name).relative_to(folder).as_posix()
            if name.startswith("."):
                skipped.append(rel)
            else:
                files.append((rel, root_path / name))
    return files, skipped, problems


def _code_problems(folder: Path, staged_paths: set[str]) -> list[Problem]:
    """Remote-code references and code modules that would be missing from the repo."""
    problems = []

    def need_module(module: str, where: str, prefix: str = "") -> None:
        path = prefix + module.replace(".", "/") + ".py"
        if path not in staged_paths:
            problems.append((MissingCodeFileError, where, f"names code module {module!r} but {path} is not staged"))

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
                            (RemoteCodeReferenceError, rel, f"auto_map[{auto_class!r}] = {item!r} is in another repo")
                        )
                    elif "." in item:
                        need_module(item.rsplit(".", 1)[0], rel)
        if rel == "modules.json" and isinstance(data, list):
            for module in data:
                kind = str(module.get("type", "")) if isinstance(module, dict) else ""
                if "--" in kind or _REMOTE_CODE_RE.search(kind):
                    problems.append((RemoteCodeReferenceError, rel, f"module type {kind!r} is in another repo"))
                elif kind and not kind.startswith("sentence_transformers.") and "." in kind:
                    need_module(kind.rsplit(".", 1)[0], rel)
    for rel in sorted(p for p in staged_paths if p.endswith(".py")):
        text = (folder / rel).read_text(encoding="utf-8", errors="replace")
        match = _REMOTE_CODE_RE.search(text)
        if match:
            problems.append((RemoteCodeReferenceError, rel, f"refers to code in another repo: {match.group(0)!r}"))
        prefix = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        for module in _RELATIVE_IMPORT_RE.findall(text):
            need_module(module, rel, prefix)
    return problems


def _raise_problems(problems: list[Problem]) -> None:
    if not problems:
        return
    error, path, _ = problems[0]
    lines = "\n".join(f"  {p}: {reason}" for _, p, reason in problems)
    count = len({p for _, p, _ in problems})
    message = f"refusing to publish: {count} file(s) cannot go to the Hub\n{lines}"
    raise error(message, path=path, problems=[(p, reason) for _, p, reason in problems])


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
            problems.append((PickleFileError, rel, "pickle-based format: loading it runs arbitrary code"))
            continue
        kind = _kind_of(rel)
        if kind is None:
            problems.append(
                (
                    DisallowedFileError,
                    rel,
                    "not an allowed kind (safetensors, JSON, Python, Markdown, tokenizer .txt/.jinja/.model)",
                )
            )
            continue
        if not path.is_file():
            problems.append((DisallowedFileError, rel, "not a regular file"))
            continue
        bad = _check_content(path, kind)
        if bad:
            problems.append((bad[0], rel, bad[1]))
            continue
        sha, size, has_token = _hash_and_scan(path, token)
        if has_token:
            problems.append((SecretInFolderError, rel, "contains the access token used for this push"))
            continue
        staged.append(StagedFile(path=rel, size=size, sha256=sha, source=path))
    staged_paths = {f.path for f in staged}
    problems += _code_problems(folder, staged_paths)
    _raise_problems(problems)
    missing = [name for name in REQUIRED_FILES if name not in staged_paths]
    if missing or not any(p.endswith(".safetensors") for p in staged_paths):
        raise IncompleteFolderError(
            f"{folder} lacks {missing or 'safetensors weights'}: every e5-omni repo serves both entry paths "
            "(AutoModel and SentenceTransformer); write the folder with e5omni.release.save_hub_folder",
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
