"""The push: one atomic `create_commit` of the staged files on top of the head just read, through a mockable HfApi."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5omni.publish.errors import ConcurrentUpdateError, HubError, PublishError, VisibilityError
from e5omni.publish.stage import StagedFile, stage_folder, write_staged
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
