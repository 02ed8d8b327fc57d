"""Embed a corpus and search it: `e5omni index` / `e5omni search`.

- `sources.py`: folders, JSONL / CSV / Parquet item tables and `hub:` datasets -> records (an item, or an error
  with its reason)
- `build.py`: `build_corpus`: sharded Parquet + manifest + errors.jsonl, resumable; the local engine and the writer
- `ray_engine.py`: the Ray Data engine (`engine="ray"`): decode in CPU tasks, embed in an actor pool (imports Ray)
- `search.py`: `CorpusIndex` over faiss (flat / ivf / ivfpq / hnsw): build, load, search, add; `verify_index`
"""

from e5omni.index.build import (
    ENGINES,
    BuildSummary,
    IndexBuildError,
    IndexDamagedError,
    SourceChangedError,
    build_corpus,
    read_manifest,
)
from e5omni.index.search import KINDS, CorpusIndex, IndexMismatchError, SearchResult, verify_index
from e5omni.index.sources import Record, iter_folder, iter_hub, iter_source, iter_table, parse_hub, survey_source

__all__ = [
    "ENGINES",
    "KINDS",
    "BuildSummary",
    "CorpusIndex",
    "IndexBuildError",
    "IndexDamagedError",
    "IndexMismatchError",
    "Record",
    "SearchResult",
    "SourceChangedError",
    "build_corpus",
    "iter_folder",
    "iter_hub",
    "iter_source",
    "iter_table",
    "parse_hub",
    "read_manifest",
    "survey_source",
    "verify_index",
]
