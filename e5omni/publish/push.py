"""The push: one atomic `create_commit` of the staged files on top of the head just read, through a mockable HfApi."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5omni.publish.errors import (
    ConcurrentUpdateError,
    DisallowedFileError,
    HubError,
    IncompleteFolderError,
    PickleFileError,
    PublishError,
    SecretInFolderError,
    VisibilityError,
)
from e5omni.publish.stage import (
    MANIFEST_FORMAT,
    StagedFile,
    _check_content,
    _generated,
    _hash_and_scan,
    _json_bytes,
    _kind_of,
    _raise_problems,
    _walk,
    stage_folder,
    write_staged,
)
from e5omni.publish.tokens import redact, resolve_token

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Publish e5-omni model: weights, code, calibration and model card"


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

    return _commit_staged(
        staged,
        repo_id,
        target,
        api=api,
        token=token,
        private=private,
        create_pr=create_pr,
        commit_message=commit_message,
        commit_description=commit_description or _commit_description(staged),
        delete_stale=delete_stale,
        verbose=verbose,
    )


def _commit_staged(
    staged: list[StagedFile],
    repo_id: str,
    target: str,
    *,
    api: Any,
    token: str | None,
    private: bool,
    create_pr: bool,
    commit_message: str,
    commit_description: str,
    delete_stale: bool,
    verbose: bool,
) -> PushResult:
    """One `create_commit` of `staged` on top of the head of `target` just read (created from main when missing),
    deleting the target's files that are not staged in the same commit (with `delete_stale`)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    entries = tuple(f.manifest_entry() for f in staged)
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
        commit_description=commit_description,
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


# ------------------------------------------------------------------------------------------- the served form (vLLM)
#: `e5omni push --vllm`: the vLLM export goes to its own repo, named after the model's.
VLLM_REPO_SUFFIX = "-vllm"
#: What an export holds: weights, JSON, tokenizer text, the chat template and the README. No code: vLLM runs none of
#: ours, so a .py file in an export folder is something else and is refused.
VLLM_EXPORT_KINDS = {"weights", "json", "text", "binary"}
VLLM_EXPORT_REQUIRED = ("config.json", "model.safetensors", "modules.json", "e5omni_export.json")


def vllm_repo_id(model_repo_id: str) -> str:
    """The repo `e5omni push --vllm` publishes the served form of `model_repo_id` to: `owner/name-vllm`."""
    return model_repo_id + VLLM_REPO_SUFFIX


def stage_vllm_export(
    export_dir: str | os.PathLike,
    *,
    repo_id: str,
    model_repo_id: str | None = None,
    model_revision: str | None = None,
    token: str | None = None,
) -> list[StagedFile]:
    """The files of one commit of an `e5omni export --format vllm` folder: its files as they are (checked: no
    pickles, no code, no token, valid JSON / safetensors), its README rewritten for the Hub (download the repo, then
    serve that folder; a link to the model repo it was exported from), e5omni_export.json with the source repo and
    commit, and a manifest. Raises the `FolderCheckError` family naming each offending file."""
    from e5omni.export.to_vllm import export_readme

    folder = Path(export_dir)
    if not folder.is_dir():
        raise IncompleteFolderError(f"{folder} is not a folder")
    missing = [name for name in VLLM_EXPORT_REQUIRED if not (folder / name).is_file()]
    if missing:
        raise IncompleteFolderError(
            f"{folder} is not a vLLM export (e5omni export --format vllm): missing {', '.join(missing)}"
        )
    export = json.loads((folder / "e5omni_export.json").read_text(encoding="utf-8"))
    if not isinstance(export, dict) or export.get("format") != "vllm":
        raise IncompleteFolderError(f"{folder / 'e5omni_export.json'}: format is not 'vllm'")
    files, _, problems = _walk(folder)
    staged: list[StagedFile] = []
    for rel, path in files:
        if rel in ("README.md", "e5omni_export.json", "manifest.json"):
            continue  # written below
        if path.is_symlink():
            problems.append((DisallowedFileError, rel, "a symlink (copy the file into the folder instead)"))
            continue
        kind = _kind_of(rel)
        if path.suffix.lower() in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"):
            problems.append((PickleFileError, rel, "a pickle-based file (loading it runs code)"))
            continue
        if kind not in VLLM_EXPORT_KINDS:
            problems.append((DisallowedFileError, rel, "not a file an export holds (weights, JSON, tokenizer text)"))
            continue
        bad = _check_content(path, kind)
        if bad is not None:
            problems.append((bad[0], rel, bad[1]))
            continue
        digest, size, has_token = _hash_and_scan(path, token)
        if has_token:
            problems.append((SecretInFolderError, rel, "contains the Hub token"))
            continue
        staged.append(StagedFile(path=rel, size=size, sha256=digest, source=path))
    _raise_problems(problems)
    if model_repo_id:
        export = {**export, "source_repo": model_repo_id}
        if model_revision:
            export["source_revision"] = model_revision
    staged.append(_generated("e5omni_export.json", _json_bytes(export)))
    staged.append(_generated("README.md", export_readme(export, "exported/", repo_id=repo_id).encode("utf-8")))
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "vllm-export",
        "files": [f.manifest_entry() for f in sorted(staged, key=lambda f: f.path)],
    }
    staged.append(_generated("manifest.json", _json_bytes(manifest)))
    staged.sort(key=lambda f: f.path)
    return staged


def push_vllm_export(
    export_dir: str | os.PathLike,
    repo_id: str,
    *,
    model_repo_id: str | None = None,
    model_revision: str | None = None,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Publish the vLLM export of an e5-omni model",
    dry_run_dir: str | os.PathLike | None = None,
    api: Any = None,
    verbose: bool = True,
) -> PushResult:
    """Publish a vLLM export folder to `repo_id` (by convention `vllm_repo_id(model_repo_id)`) in one commit, the
    same way `push_folder` publishes a model: `dry_run_dir` writes the commit's files there and sends nothing."""
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    token = resolve_token(token)
    target = revision or "main"
    staged = stage_vllm_export(
        export_dir, repo_id=repo_id, model_repo_id=model_repo_id, model_revision=model_revision, token=token
    )
    if dry_run_dir is not None:
        out = write_staged(staged, dry_run_dir)
        if verbose:
            plan = _describe_plan(repo_id, target, staged, False, private)
            print(f"dry run: nothing was sent. One commit would carry:\n{plan}\nstaged folder: {out}")
        return PushResult(
            repo_id=repo_id, revision=target, files=tuple(f.manifest_entry() for f in staged), dry_run_dir=out
        )
    source = f"{model_repo_id}@{model_revision}" if model_repo_id and model_revision else (model_repo_id or "a model")
    return _commit_staged(
        staged,
        repo_id,
        target,
        api=api,
        token=token,
        private=private,
        create_pr=False,
        commit_message=commit_message,
        commit_description=f"vLLM export of {source} (e5omni export --format vllm), published in one commit.\n"
        + "\n".join(f"{f.path}: sha256 {f.sha256}" for f in staged if f.path.endswith(".safetensors")),
        delete_stale=True,
        verbose=verbose,
    )
