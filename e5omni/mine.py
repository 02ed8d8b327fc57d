"""`e5omni mine`: hard negatives for (query, positive) examples, with the false negatives kept out.

For every example the query is embedded with the query prompt (`model.encode_query`), the candidate pool with
`encode_document`, and faiss ranks the pool for the query. The pool is the data's own positives by default (one row
per distinct content, embedded through `e5omni.index.build_corpus`, so on either engine, resumably), or an
`e5omni index` folder (`corpus=DIR`, searched through its own `CorpusIndex`). The candidates then go through the rules
below, in this order; the first rule that removes a candidate counts it in the summary:

    query_itself        the query's own content (a text->text example's query in the pool)
    positive            the example's positive, under any id (same `content_hash`)
    positive_duplicate  the same content as the positive under another path: every media file is compared by its
                        bytes (`content_hash` compares paths only)
    query_positive      another positive of the same query: examples whose queries have the same content are one
                        query with several positives, and none of them is a negative of it
    repeated            the same content as a negative already taken for this query (a corpus holding copies)
    modality            (`same_modality=True`) a candidate whose modalities are not the positive's
    absolute_margin     score + margin > the positive's score                 (sentence-transformers' rules,
    relative_margin     score > positive - |positive| * margin                 `mine_hard_negatives`; the
    max_score           score > max_score                                      positive's score is the lowest
    min_score           score < min_score                                      over the query's positives)
    range_min           the first `range_min` candidates left after the rules above (the most similar ones)
    range_max           candidates left beyond rank `range_max`

and the first `num_negatives` left are the example's negatives ("top" sampling: deterministic). Each query first
retrieves range_max + (its most positives) + 1 candidates, as sentence-transformers does; a query whose candidates
the rules used up before `num_negatives` were found retrieves twice as many, and so on up to `max_candidates`
(default 1024): the modality rule and the margins can remove most of a weak model's top ranks. An example with
fewer is left out of the output and recorded in the errors file (`TooFewNegatives`, with the counts), as an example
whose query or positive cannot be embedded is (with the item's error): the data loader of `e5omni train` needs the
same number of negatives in every example. Negatives already in the data are replaced.

Output (`out` = FILE.jsonl): one line per example in the JSON-lines format `load_jsonl` / `e5omni train` read
(`query`, `positive`, `negatives`, and `pair` / `id` when the example has them). Media paths are written relative to
the output's folder, the default media root of `load_jsonl`, so they resolve to the same files on reload; media held
in memory (PIL images, arrays: the synthetic set, `hub:` datasets) are written once each, named by their content
hash, under FILE.media/: images as PNG, audio as WAV (float32 or the integer PCM it came as), video frames as lossless
FFV1 Matroska at the model's fps (read back frame for frame for an even count of 4 .. max_frames frames). Next to it:
FILE.errors.jsonl (one line per example left out: index, id, error, message), FILE.summary.json (the counts per rule,
also returned) and FILE.work/ (the pool index and the finished chunks). Examples are mined in chunks of
`chunk_size`; each finished chunk is written atomically (file, then its stats as the marker), so a killed run
resumed with `resume=True` redoes only the unfinished chunk, and the final files are assembled from the chunks.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from e5omni.data.errors import DataError
from e5omni.mine_items import (  # importable from here, as before the split
    MEDIA_KEYS,
    ContentKeys,
    ItemWriter,
    MediaOutsideOutputError,
    UnwritableItemError,
)

__all__ = [
    "FORMAT",
    "MEDIA_KEYS",
    "RULES",
    "Candidate",
    "ContentKeys",
    "ItemWriter",
    "MediaOutsideOutputError",
    "MineError",
    "MineRules",
    "MineSummary",
    "UnwritableItemError",
    "mine",
    "select_negatives",
    "side_paths",
]

FORMAT = "e5omni-mine/1"
RULES: tuple[str, ...] = (
    "query_itself",
    "positive",
    "positive_duplicate",
    "query_positive",
    "repeated",
    "modality",
    "absolute_margin",
    "relative_margin",
    "max_score",
    "min_score",
    "range_min",
    "range_max",
)


class MineError(ValueError):
    """A mining job that cannot run as asked: bad options, an output in the way, a resume of another job."""


@dataclass(frozen=True)
class MineRules:
    """How candidates become negatives (the module docstring lists the rules in the order they apply)."""

    num_negatives: int = 2
    range_min: int = 0
    range_max: int | None = None
    max_score: float | None = None
    min_score: float | None = None
    absolute_margin: float | None = None
    relative_margin: float | None = None
    same_modality: bool = False
    max_candidates: int = 1024

    def resolved_range_max(self, max_positives: int) -> int:
        """`range_max`, or sentence-transformers' default: room for the query's positives, `num_negatives`, and
        10 x as many when a score rule may remove candidates."""
        if self.range_max is not None:
            return self.range_max
        scored = any(v is not None for v in (self.absolute_margin, self.relative_margin, self.max_score))
        return self.range_min + self.num_negatives * (10 if scored else 1) + max_positives

    def check(self) -> None:
        if isinstance(self.num_negatives, bool) or not isinstance(self.num_negatives, int) or self.num_negatives < 1:
            raise MineError(f"num_negatives must be an integer >= 1, got {self.num_negatives!r}")
        if self.max_candidates < 1:
            raise MineError(f"max_candidates must be >= 1, got {self.max_candidates}")
        if self.range_min < 0:
            raise MineError(f"range_min must be >= 0, got {self.range_min}")
        if self.range_max is not None and self.range_max - self.range_min < self.num_negatives:
            raise MineError(
                f"cannot take {self.num_negatives} negatives from ranks [{self.range_min}, {self.range_max}): "
                "lower num_negatives or range_min, or raise range_max"
            )
        for name in ("absolute_margin", "relative_margin"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value):
                raise MineError(f"{name} must be a finite number, got {value!r}")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise MineError(f"min_score {self.min_score} is above max_score {self.max_score}")


@dataclass
class Candidate:
    """One retrieved pool row for one query: its score and what identifies its content."""

    row: int
    score: float
    hash: int
    key: int
    modalities: tuple[str, ...]


def select_negatives(
    candidates: Sequence[Candidate],
    *,
    rules: MineRules,
    query_hash: int,
    positive_hash: int,
    positive_key: int,
    query_positive_hashes: set[int],
    query_positive_keys: set[int],
    positive_modalities: tuple[str, ...],
    positive_score: float,
    range_max: int,
) -> tuple[list[Candidate], Counter]:
    """The negatives of one query (at most `rules.num_negatives`, best first) and how many candidates each rule
    removed. `candidates` are in rank order (best first); `positive_score` is the lowest score of the query's
    positives (the margins are measured from the harder positive, as sentence-transformers does)."""
    removed: Counter = Counter()
    survivors: list[Candidate] = []
    seen: set[int] = set()
    for cand in candidates:
        rule = None
        if cand.hash == query_hash:
            rule = "query_itself"
        elif cand.hash == positive_hash:
            rule = "positive"
        elif cand.key == positive_key:
            rule = "positive_duplicate"
        elif cand.hash in query_positive_hashes or cand.key in query_positive_keys:
            rule = "query_positive"
        elif cand.key in seen:
            rule = "repeated"
        elif rules.same_modality and cand.modalities != positive_modalities:
            rule = "modality"
        elif rules.absolute_margin is not None and cand.score + rules.absolute_margin > positive_score:
            rule = "absolute_margin"
        elif (
            rules.relative_margin is not None
            and cand.score > positive_score - abs(positive_score) * rules.relative_margin
        ):
            rule = "relative_margin"
        elif rules.max_score is not None and cand.score > rules.max_score:
            rule = "max_score"
        elif rules.min_score is not None and cand.score < rules.min_score:
            rule = "min_score"
        if rule is not None:
            removed[rule] += 1
            continue
        seen.add(cand.key)
        survivors.append(cand)
    removed["range_min"] += min(rules.range_min, len(survivors))
    removed["range_max"] += max(0, len(survivors) - range_max)
    window = survivors[rules.range_min : range_max]
    return window[: rules.num_negatives], removed


# ------------------------------------------------------------------------------------------------- the job
@dataclass
class MineSummary:
    out: Path
    examples: int = 0
    written: int = 0
    errors: int = 0
    errors_by_type: Counter = field(default_factory=Counter)
    candidates: int = 0
    removed: Counter = field(default_factory=Counter)
    negatives: int = 0
    positive_score_sum: float = 0.0
    negative_score_sum: float = 0.0
    pool: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, stats: Mapping[str, Any]) -> None:
        for name in ("written", "errors", "candidates", "negatives"):
            setattr(self, name, getattr(self, name) + int(stats[name]))
        self.positive_score_sum += float(stats["positive_score_sum"])
        self.negative_score_sum += float(stats["negative_score_sum"])
        self.errors_by_type.update(stats["errors_by_type"])
        self.removed.update(stats["removed"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "examples": self.examples,
            "written": self.written,
            "errors": self.errors,
            "errors_by_type": dict(sorted(self.errors_by_type.items())),
            "pool": self.pool,
            "rules": self.rules,
            "candidates": self.candidates,
            "removed": {rule: int(self.removed.get(rule, 0)) for rule in RULES},
            "negatives": self.negatives,
            "mean_positive_score": round(self.positive_score_sum / self.written, 6) if self.written else None,
            "mean_negative_score": round(self.negative_score_sum / self.negatives, 6) if self.negatives else None,
            "seconds": round(self.seconds, 2),
        }


def side_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The files of a mining job next to `out`: errors, summary, work folder, media folder."""
    out = Path(out)
    stem = out.parent / out.stem
    return {
        "errors": Path(f"{stem}.errors.jsonl"),
        "summary": Path(f"{stem}.summary.json"),
        "work": Path(f"{stem}.work"),
        "media": Path(f"{stem}.media"),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _row_id(value: int) -> str:
    return f"{value & 0xFFFFFFFFFFFFFFFF:016x}"


def _modalities(item: Any) -> tuple[str, ...]:
    from e5omni.index.build import modality_names

    return tuple(modality_names(item))


def _embed_queries(model, items: list[Any], batch_size: int, truncate_dim: int | None):
    """({position: vector}, {position: (error type, reason)}): encode_query batch by batch; an item encode refuses
    (it names the item) is taken out of its batch and the batch is embedded again without it."""
    from modeling_e5omni.inputs_e5omni import E5OmniInputError

    vectors: dict[int, np.ndarray] = {}
    failures: dict[int, tuple[str, str]] = {}
    for start in range(0, len(items), batch_size):
        pending = list(range(start, min(start + batch_size, len(items))))
        while pending:
            try:
                out = model.encode_query(
                    [items[p] for p in pending],
                    batch_size=batch_size,
                    show_progress_bar=False,
                    truncate_dim=truncate_dim,
                )
            except E5OmniInputError as err:
                if err.index is not None and 0 <= err.index < len(pending):
                    failures[pending.pop(err.index)] = (type(err).__name__, err.reason)
                    continue
                for p in list(pending):  # no usable index: one by one
                    try:
                        model.encode_query([items[p]], show_progress_bar=False, truncate_dim=truncate_dim)
                    except E5OmniInputError as one:
                        failures[p] = (type(one).__name__, one.reason)
                        pending.remove(p)
                continue
            for p, vector in zip(pending, out.float().numpy(), strict=True):
                vectors[p] = vector.astype(np.float32)
            break
    return vectors, failures


class _Pool:
    """The searchable candidates: a CorpusIndex plus, for each row, its content hash, key, modalities and item."""

    def __init__(self, index, hashes, keys, modalities, item_of):
        self.index, self.hashes, self.keys, self.modalities, self.item_of = index, hashes, keys, modalities, item_of


def _corpus_items(manifest: dict, source: str | None, media_root: str | None) -> dict[str, Any]:
    """id -> item of an index folder's rows, read again from the corpus source its manifest records (or `source`)."""
    from e5omni.index import iter_source

    recorded = manifest.get("source") or {}
    if source is None:
        source, media_root = recorded.get("path"), recorded.get("media_root")
    if not source:
        raise MineError(
            "the corpus index records no source (it was built from records in Python): pass corpus_source "
            "(--corpus-source) to read its items from"
        )
    return {record.id: record.item for record in iter_source(source, media_root) if record.error is None}


def mine(
    model: Any,
    examples: Sequence[Mapping[str, Any]],
    out: str | os.PathLike,
    *,
    rules: MineRules | None = None,
    corpus: str | os.PathLike | None = None,
    corpus_source: str | None = None,
    corpus_media_root: str | None = None,
    model_path: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    num_actors: int | None = None,
    num_workers: int = 0,
    batch_size: int = 32,
    chunk_size: int = 512,
    resume: bool = False,
    data_spec: str | None = None,
    show_progress_bar: bool = True,
) -> MineSummary:
    """Mine hard negatives for `examples` into `out` (a .jsonl file); see the module docstring."""
    from tqdm.auto import tqdm

    from e5omni.evaluation.embeddings import model_fingerprint
    from e5omni.index import CorpusIndex, build_corpus, read_manifest

    rules = rules or MineRules()
    rules.check()
    if chunk_size < 1 or batch_size < 1:
        raise MineError(f"chunk_size and batch_size must be >= 1, got {chunk_size}, {batch_size}")
    out = Path(out)
    if out.suffix.lower() != ".jsonl":
        raise MineError(f"--out must be a .jsonl file (what e5omni train reads), got {out}")
    paths = side_paths(out)
    work = paths["work"]
    start_time = time.perf_counter()
    fingerprint = model_fingerprint(model)

    corpus_manifest = read_manifest(corpus) if corpus is not None else None
    truncate_dim = corpus_manifest["contract"]["truncate_dim"] if corpus_manifest else None
    writer = ItemWriter(out.parent, paths["media"], float(model.config.fps))
    _check_writable(writer, examples)
    state = {
        "format": FORMAT,
        "model": fingerprint,
        "rules": asdict(rules),
        "examples": len(examples),
        "data": data_spec,
        "chunk_size": chunk_size,
        "corpus": None if corpus is None else str(Path(corpus).resolve()),
        "corpus_model": None if corpus_manifest is None else corpus_manifest["model"]["fingerprint"],
    }
    if work.exists():
        if not resume:
            raise MineError(
                f"{work} holds an unfinished or finished mining job: pass resume=True (--resume) or remove it"
            )
        old = json.loads((work / "state.json").read_text()) if (work / "state.json").is_file() else None
        if old != state:
            differs = sorted(k for k in state if old is None or old.get(k) != state[k])
            raise MineError(f"cannot resume {work}: this run differs in {differs}")
    else:
        if out.exists() and not resume:
            raise MineError(f"{out} exists: mine into a new file, or pass resume=True (--resume)")
        (work / "chunks").mkdir(parents=True)
        _write_atomic(work / "state.json", json.dumps(state, indent=2, sort_keys=True) + "\n")

    keys = ContentKeys()
    # ---- pass 1: what each example's query and positive are (cheap: nothing decoded but what a lazy view decodes)
    q_hash: list[int | None] = []
    p_hash: list[int | None] = []
    p_key: list[int | None] = []
    scan_errors: dict[int, tuple[str, str]] = {}
    group_hashes: dict[int, set[int]] = {}
    group_keys: dict[int, set[int]] = {}
    first_with: dict[int, int] = {}  # positive hash -> the first example holding it
    from e5omni.data.items import content_hash

    for i in range(len(examples)):
        try:
            example = examples[i]
            if not isinstance(example, Mapping) or "query" not in example or "positive" not in example:
                raise DataError("expected a dict with 'query' and 'positive'")
            qh, ph, pk = content_hash(example["query"]), content_hash(example["positive"]), keys(example["positive"])
        except (DataError, OSError) as err:
            scan_errors[i] = (type(err).__name__, str(err))
            q_hash.append(None), p_hash.append(None), p_key.append(None)
            continue
        q_hash.append(qh), p_hash.append(ph), p_key.append(pk)
        group_hashes.setdefault(qh, set()).add(ph)
        group_keys.setdefault(qh, set()).add(pk)
        first_with.setdefault(ph, i)
    max_positives = max((len(g) for g in group_hashes.values()), default=1)
    range_max = rules.resolved_range_max(max_positives)

    # ---- the positives, embedded once each (their scores set the margins; by default they are also the pool)
    from e5omni.index.sources import Record

    def positive_records():
        for ph, i in first_with.items():
            yield Record(_row_id(ph), f"example {i} positive", item=examples[i]["positive"])

    positives_dir = work / "positives"
    build_corpus(
        model,
        positive_records(),
        positives_dir,
        model_path=model_path,
        batch_size=batch_size,
        shard_size=max(chunk_size, 256),
        truncate_dim=truncate_dim,
        resume=(positives_dir / "manifest.json").exists(),
        show_progress_bar=show_progress_bar,
        engine=engine,
        ray_address=ray_address,
        num_actors=num_actors,
        num_workers=num_workers,
    )
    positives_index = CorpusIndex.build(positives_dir, kind="flat")
    positive_row = {row["id"]: r for r, row in enumerate(positives_index.rows)}
    positive_vectors = positives_index.index.reconstruct_n(0, positives_index.index.ntotal)
    positive_errors = {}
    if (positives_dir / "errors.jsonl").exists():
        for line in (positives_dir / "errors.jsonl").read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                positive_errors[entry["id"]] = (entry["error"], entry["message"])

    if corpus is None:
        rows = positives_index.rows
        pool = _Pool(
            positives_index,
            [row["content_hash"] for row in rows],
            [p_key[first_with[row["content_hash"]]] for row in rows],
            [tuple(row["modalities"]) for row in rows],
            lambda r: examples[first_with[positives_index.rows[r]["content_hash"]]]["positive"],
        )
        pool_info = {"kind": "positives", "rows": len(rows)}
    else:
        index = CorpusIndex.load(corpus)
        index.check_model(model)
        items = _corpus_items(index.manifest, corpus_source, corpus_media_root)
        cache: dict[int, int] = {}

        def key_of(r: int) -> int:
            if r not in cache:
                item = items.get(index.rows[r]["id"])
                cache[r] = keys(item) if item is not None else int(index.rows[r]["content_hash"] or 0)
            return cache[r]

        hashes = [
            row["content_hash"] if row.get("content_hash") is not None else content_hash(items[row["id"]])
            for row in index.rows
        ]
        pool = _Pool(index, hashes, _Lazy(key_of), [tuple(row["modalities"]) for row in index.rows], None)
        pool.item_of = lambda r: items[index.rows[r]["id"]]
        pool_info = {"kind": "corpus", "path": str(Path(corpus).resolve()), "rows": len(index.rows)}

    summary = MineSummary(out, examples=len(examples), pool=pool_info, rules={**asdict(rules), "range_max": range_max})
    fetch = range_max + max_positives + 1
    n_chunks = (len(examples) + chunk_size - 1) // chunk_size
    bar = tqdm(total=len(examples), unit="example", desc="mine", disable=not show_progress_bar, dynamic_ncols=True)
    with bar:
        for number in range(n_chunks):
            stats_path = work / "chunks" / f"{number:05d}.json"
            indices = list(range(number * chunk_size, min((number + 1) * chunk_size, len(examples))))
            if not stats_path.exists():
                _mine_chunk(
                    model, examples, indices, work / "chunks", number, writer=writer, pool=pool, rules=rules,
                    range_max=range_max, fetch=fetch, batch_size=batch_size, truncate_dim=truncate_dim,
                    q_hash=q_hash, p_hash=p_hash, p_key=p_key, scan_errors=scan_errors, group_hashes=group_hashes,
                    group_keys=group_keys, positive_row=positive_row, positive_vectors=positive_vectors,
                    positive_errors=positive_errors,
                )  # fmt: skip
            summary.add(json.loads(stats_path.read_text()))
            bar.update(len(indices))

    # ---- assemble the outputs from the chunks
    for target, suffix in ((out, ".jsonl"), (paths["errors"], ".errors.jsonl")):
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for number in range(n_chunks):
                handle.write((work / "chunks" / f"{number:05d}{suffix}").read_text(encoding="utf-8"))
        os.replace(tmp, target)
    summary.seconds = time.perf_counter() - start_time
    _write_atomic(paths["summary"], json.dumps(summary.as_dict(), indent=2) + "\n")
    return summary


def _check_writable(writer: ItemWriter, examples: Sequence[Mapping[str, Any]]) -> None:
    """Write the first example's items now: media outside the output's folder fail here, before any embedding."""
    for i in range(len(examples)):
        try:
            example = examples[i]
            query, positive = example["query"], example["positive"]
        except (DataError, OSError, KeyError, TypeError):
            continue  # recorded as that example's error later
        for role, item in (("query", query), ("positive", positive)):
            try:
                writer(item, role)
            except MediaOutsideOutputError as err:
                raise MediaOutsideOutputError(f"example {i}: {err}") from None
        return


class _Lazy:
    """A list-like whose entries are computed on first access (file digests of the corpus rows a query retrieves)."""

    def __init__(self, get):
        self.get = get

    def __getitem__(self, r: int) -> int:
        return self.get(r)


def _mine_chunk(
    model, examples, indices, folder: Path, number: int, *, writer, pool, rules, range_max, fetch, batch_size,
    truncate_dim, q_hash, p_hash, p_key, scan_errors, group_hashes, group_keys, positive_row, positive_vectors,
    positive_errors,
) -> None:  # fmt: skip
    lines: list[str] = []
    errors: list[str] = []
    stats: dict[str, Any] = {
        "written": 0,
        "errors": 0,
        "candidates": 0,
        "negatives": 0,
        "positive_score_sum": 0.0,
        "negative_score_sum": 0.0,
        "errors_by_type": Counter(),
        "removed": Counter(),
    }

    def fail(i: int, kind: str, message: str) -> None:
        example = examples[i] if i not in scan_errors else None
        rid = example.get("id") if isinstance(example, Mapping) else None
        errors.append(json.dumps({"index": i, "id": rid, "error": kind, "message": message}) + "\n")
        stats["errors"] += 1
        stats["errors_by_type"][kind] += 1

    todo = []
    for i in indices:
        if i in scan_errors:
            fail(i, *scan_errors[i])
        elif _row_id(p_hash[i]) in positive_errors:
            kind, message = positive_errors[_row_id(p_hash[i])]
            fail(i, kind, f"positive: {message}")
        else:
            todo.append(i)
    queries = [examples[i]["query"] for i in todo]
    vectors, failures = _embed_queries(model, queries, batch_size, truncate_dim)
    for position, (kind, reason) in failures.items():
        fail(todo[position], kind, f"query: {reason}")
    kept = [(i, vectors[p]) for p, i in enumerate(todo) if p in vectors]
    total = int(pool.index.index.ntotal)
    limit = max(fetch, min(rules.max_candidates, total))
    selections: dict[int, tuple] = {}
    pending, k = list(range(len(kept))), fetch
    if kept:
        query_matrix = np.stack([v for _, v in kept]).astype(np.float32)
    while pending:  # a query whose candidates the rules used up retrieves twice as many, up to max_candidates
        scores, rows = pool.index.ranked(query_matrix[pending], k)
        more = []
        for m, n in enumerate(pending):
            i, vector = kept[n]
            group = group_hashes[q_hash[i]]
            own = float(positive_vectors[positive_row[_row_id(p_hash[i])]] @ vector)
            positive_scores = [
                float(positive_vectors[positive_row[_row_id(h)]] @ vector) for h in group if _row_id(h) in positive_row
            ]
            candidates = [
                Candidate(int(r), float(s), int(pool.hashes[r]), int(pool.keys[r]), pool.modalities[r])
                for s, r in zip(scores[m], rows[m], strict=True)
                if r >= 0
            ]
            chosen, removed = select_negatives(
                candidates,
                rules=rules,
                query_hash=q_hash[i],
                positive_hash=p_hash[i],
                positive_key=p_key[i],
                query_positive_hashes=group,
                query_positive_keys=group_keys[q_hash[i]],
                positive_modalities=_modalities(examples[i]["positive"]),
                positive_score=min(positive_scores or [own]),
                range_max=range_max,
            )
            selections[n] = (own, candidates, chosen, removed)
            if len(chosen) < rules.num_negatives and len(candidates) >= k and k < limit:
                more.append(n)
        pending, k = more, min(2 * k, limit)
    for n, (i, _vector) in enumerate(kept):
        own, candidates, chosen, removed = selections[n]
        example = examples[i]
        stats["candidates"] += len(candidates)
        stats["removed"].update(removed)
        if len(chosen) < rules.num_negatives:
            counts = ", ".join(f"{k} {v}" for k, v in removed.items() if v)
            fail(
                i,
                "TooFewNegatives",
                f"{len(chosen)} of {rules.num_negatives} negatives left from {len(candidates)} candidates "
                f"(removed: {counts or 'none'}); widen range_max / max_candidates or relax the rules",
            )
            continue
        try:
            record = {
                "query": writer(example["query"], "query"),
                "positive": writer(example["positive"], "positive"),
                "negatives": [writer(pool.item_of(c.row), f"negatives[{j}]") for j, c in enumerate(chosen)],
            }
        except (DataError, OSError, ValueError) as err:
            fail(i, type(err).__name__, str(err))
            continue
        for key in ("pair", "id"):
            if isinstance(example.get(key), str):
                record[key] = example[key]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        stats["written"] += 1
        stats["negatives"] += len(chosen)
        stats["positive_score_sum"] += own
        stats["negative_score_sum"] += sum(c.score for c in chosen)
    # lines in example order, errors in example order: an uninterrupted run and a resumed one write the same files
    errors.sort(key=lambda line: json.loads(line)["index"])
    _write_atomic(folder / f"{number:05d}.jsonl", "".join(lines))
    _write_atomic(folder / f"{number:05d}.errors.jsonl", "".join(errors))
    stats["errors_by_type"] = dict(stats["errors_by_type"])
    stats["removed"] = dict(stats["removed"])
    _write_atomic(folder / f"{number:05d}.json", json.dumps(stats) + "\n")  # the marker: written last
