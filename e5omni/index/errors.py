"""The errors of an index job (`e5omni index`), in a module of their own so that every engine can raise them without
importing the build module that drives it (`build.py` imports `ray_engine.py` lazily; the engine imports only this)."""

from __future__ import annotations


class IndexBuildError(RuntimeError):
    """An index folder that cannot be written or resumed as asked (another model, another contract, not empty)."""


class SourceChangedError(IndexBuildError):
    """`--resume` of an index whose source changed since the run started (the message says what changed)."""


class IndexDamagedError(IndexBuildError):
    """A file of an index folder that is missing, unreadable, of another kind or not what the manifest recorded;
    the message names the file and what is wrong."""


__all__ = ["IndexBuildError", "IndexDamagedError", "SourceChangedError"]
