"""The typed errors of a push: every refusal of a folder and every failure on the Hub is a `PublishError`."""

from __future__ import annotations


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
