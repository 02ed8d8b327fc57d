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
- `calibration.json`: the learned temperatures and whitening statistics in readable form
  (`e5omni.model_card.calibration_summary`);
- `README.md`: the model card (`e5omni.model_card.render_model_card`), unless the folder brings its own README and no
  card context is given (so a reviewed dry-run folder can be pushed as it is);
- `manifest.json`: path, size and sha256 of every other staged file.
Files present in the target revision but not staged are deleted in the same commit (`delete_stale=True`), so a
stale shard index or an old `pytorch_model.bin` cannot survive next to the new weights.

Tokens: taken from the `token` argument or `HF_TOKEN` (otherwise huggingface_hub's stored login is used). The token
is passed to `HfApi` calls and nowhere else: no log line, staged file, manifest, result or exception contains it.
Errors from the Hub are re-raised as `HubError` with every token-like string redacted and without the original
exception chained (a chained exception would print the unredacted message in the traceback).

What lives where (everything below is re-exported here, so `from e5omni.publish import X` is the import to use):
- `errors.py`: `PublishError` and its subclasses, the folder refusals (`FolderCheckError` ...) and the Hub failures;
- `tokens.py`: `resolve_token` and `redact`, shared by staging, the push, verification and the CLI;
- `stage.py`: the allow-list, content and code-reference checks, `stage_folder`, `write_staged`, `check_manifest`;
- `push.py`: `push_folder` and `PushResult`, the redacting `_hub_call` wrapper, the commit description;
- `verify.py`: `probe_items`, `verify_folder`, `verify_push` and `VerifyResult`;
- the `e5omni push` command is `e5omni.cli.publish` (`add_push_parser`, `run_push_command`).
"""

from __future__ import annotations

from e5omni.publish.errors import (
    ConcurrentUpdateError,
    DisallowedFileError,
    FolderCheckError,
    HubError,
    IncompleteFolderError,
    InvalidFileError,
    MissingCodeFileError,
    PickleFileError,
    PublishError,
    RemoteCodeReferenceError,
    SecretInFolderError,
    VerificationError,
    VisibilityError,
)
from e5omni.publish.push import DEFAULT_COMMIT_MESSAGE, PushResult, push_folder
from e5omni.publish.stage import (
    ALLOWED_BINARY_NAMES,
    ALLOWED_SUFFIXES,
    GENERATED,
    MANIFEST_FORMAT,
    PICKLE_SUFFIXES,
    REQUIRED_FILES,
    StagedFile,
    check_manifest,
    stage_folder,
    write_staged,
)
from e5omni.publish.tokens import redact, resolve_token
from e5omni.publish.verify import VerifyResult, probe_items, verify_folder, verify_push

__all__ = [
    "ALLOWED_BINARY_NAMES",
    "ALLOWED_SUFFIXES",
    "ConcurrentUpdateError",
    "DEFAULT_COMMIT_MESSAGE",
    "DisallowedFileError",
    "FolderCheckError",
    "GENERATED",
    "HubError",
    "IncompleteFolderError",
    "InvalidFileError",
    "MANIFEST_FORMAT",
    "MissingCodeFileError",
    "PICKLE_SUFFIXES",
    "PickleFileError",
    "PublishError",
    "PushResult",
    "REQUIRED_FILES",
    "RemoteCodeReferenceError",
    "SecretInFolderError",
    "StagedFile",
    "VerificationError",
    "VerifyResult",
    "VisibilityError",
    "check_manifest",
    "probe_items",
    "push_folder",
    "redact",
    "resolve_token",
    "stage_folder",
    "verify_folder",
    "verify_push",
    "write_staged",
]
