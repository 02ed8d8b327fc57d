"""Embed a corpus and search it: `e5omni index` / `e5omni search`.

- `sources.py`: folders and JSONL / CSV / Parquet item tables -> records (an item, or an error with its reason)
- `build.py`: the local engine: sharded Parquet + manifest + errors.jsonl, resumable (`build_corpus`)
- `search.py`: `CorpusIndex` over faiss (flat / hnsw / ivfpq): build, load, search, add
"""

from e5omni.index.build import BuildSummary, IndexBuildError, build_corpus, read_manifest
from e5omni.index.search import KINDS, CorpusIndex, IndexMismatchError, SearchResult
from e5omni.index.sources import Record, iter_folder, iter_source, iter_table

__all__ = [
    "KINDS",
    "BuildSummary",
    "CorpusIndex",
    "IndexBuildError",
    "IndexMismatchError",
    "Record",
    "SearchResult",
    "build_corpus",
    "iter_folder",
    "iter_source",
    "iter_table",
    "read_manifest",
]
