"""Approximate vs exact search on clustered synthetic vectors of the 7B's dimension, measured side by side.

    python benchmarks/search_ann.py [--n 200000] [--dim 3584] [--queries 200] [--threads 2] [--hnsw-n 20000]

Vectors: `--clusters` random unit centres in `--dim` dimensions, each vector a centre plus Gaussian noise, then
unit-normalised (cosine = inner product, as the index stores them). Each dimension j is scaled by (1 + j / 256)^-1/2
before normalising, so that, as in a Matryoshka-trained model, the leading dimensions carry more of the signal (an
assumption of the synthetic data: a real model's truncation curve is its own). Queries are fresh draws from the
same clusters. The ground truth is the exact (`IndexFlatIP`) top-10 of the full-dimension vectors.

Indexes, each searched with the same queries in one batch (QPS = queries / seconds of `index.search`), each built
by `e5omni.index.search.make_index` + `train_index` exactly as `e5omni index --index KIND` builds it:

    flat      exact, `IndexFlatIP`                                            the baseline
    ivf       `IndexIVFFlat`, nlist 4 sqrt(N), nprobe 16 (and 8 / 32 / 64)   full vectors, searched in nprobe lists
    ivfpq     `IndexIVFPQ`, the same lists, D / 8 8-bit sub-quantisers,      compressed to D / 8 bytes a vector
              nprobe 32 (and 16 / 64 / 128)
    hnsw      M 32, efConstruction 200, efSearch 128, on the first `--hnsw-n` vectors only (its build is
              single-machine CPU bound: hours for 200k x 3584 on two cores), against the exact top-10 of those

Memory of an index: `faiss.serialize_index` size for the compressed ones, the raw vectors plus list ids for those
holding full vectors (what serialising would copy). Matryoshka: exact search on the first 1024 / 512 / 256
components (re-normalised), recall@10 against the full-dimension exact top-10. The last output line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def clustered(n: int, dim: int, clusters: int, noise: float, seed: int, centres=None):
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = (1 + np.arange(dim, dtype=np.float32) / 256) ** -0.5
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):
        stop = min(start + 8192, n)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += rng.standard_normal((stop - start, dim), dtype=np.float32) * (noise / np.sqrt(dim))
        block *= scale
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out, centres


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def timed_search(index, queries: np.ndarray, k: int, repeats: int) -> tuple[np.ndarray, float]:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - start)
    return ids, len(queries) / best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=1.0, help="noise norm relative to a unit centre")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw-n", type=int, default=20_000, help="vectors for the HNSW index (0: skip it)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ivf", "ivfpq", "hnsw", "matryoshka"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import faiss

    from e5omni.index.search import _open_exact, _write_exact, make_index, rerank, train_index

    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    base, centres = clustered(args.n, args.dim, args.clusters, args.noise, seed=0)
    queries, _ = clustered(args.queries, args.dim, args.clusters, args.noise, seed=1, centres=centres)
    print(
        f"data: {args.n} x {args.dim} float32 ({base.nbytes / 2**30:.2f} GiB), {args.queries} queries, "
        f"{args.clusters} clusters, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    rows = {}

    flat = faiss.IndexFlatIP(args.dim)
    flat.add(base)
    truth, flat_qps = timed_search(flat, queries, args.k, args.repeats)
    rows["flat"] = {"recall@10": 1.0, "qps": flat_qps, "memory_mb": base.nbytes / 2**20, "build_s": 0.0}
    del flat  # the ground truth is kept; the memory is needed for the next indexes
    print(f"flat: {flat_qps:.1f} QPS", flush=True)

    def measure(name: str, index, truth_ids: np.ndarray, baseline_qps: float, memory: float, build: float):
        ids, qps = timed_search(index, queries, args.k, args.repeats)
        rows[name] = {
            "recall@10": recall(ids, truth_ids),
            "qps": qps,
            "speedup": qps / baseline_qps,
            "memory_mb": memory / 2**20,
            "build_s": build,
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[name].items() if v is not None), flush=True)

    for kind in ("ivf", "ivfpq"):
        if kind in args.skip:
            continue
        start = time.perf_counter()
        index = make_index(kind, args.dim, args.n)
        train_index(index, base, kind)
        index.add(base)
        build = time.perf_counter() - start
        if kind == "ivf":  # full vectors, list ids, centroids (what serialising would copy)
            memory = base.nbytes + args.n * 8 + index.nlist * args.dim * 4
        else:
            memory = faiss.serialize_index(index).nbytes
        preset = index.nprobe
        measure(f"{kind} (nlist {index.nlist}, nprobe {preset})", index, truth, flat_qps, memory, build)
        if kind == "ivfpq":  # what CorpusIndex searches: codes pick 10 x k, the memory-mapped exact store ranks them
            store = Path(tempfile.mkdtemp()) / "exact.f32"
            _write_exact(store, base)
            exact = _open_exact(store, args.dim, args.n)

            class Reranked:  # measure() calls .search(queries, k)
                def __init__(self, codes, store):
                    self.codes, self.store = codes, store

                def search(self, q, k):
                    return rerank(self.codes, lambda ids: np.asarray(self.store[ids]), q, k)

            measure(
                "ivfpq + exact re-rank (the preset's search)", Reranked(index, exact), truth, flat_qps, memory, None
            )
            rows["ivfpq + exact re-rank (the preset's search)"]["disk_mb"] = store.stat().st_size / 2**20
            store.unlink()
        for nprobe in (preset // 2, preset * 2, preset * 4):
            index.nprobe = nprobe
            measure(f"{kind} nprobe={nprobe}", index, truth, flat_qps, memory, None)
        del index
    if args.hnsw_n and "hnsw" not in args.skip:
        sub = base[: args.hnsw_n]
        sub_flat = faiss.IndexFlatIP(args.dim)
        sub_flat.add(sub)
        sub_truth, sub_qps = timed_search(sub_flat, queries, args.k, args.repeats)
        rows[f"flat ({args.hnsw_n})"] = {"recall@10": 1.0, "qps": sub_qps, "memory_mb": sub.nbytes / 2**20}
        start = time.perf_counter()
        hnsw = make_index("hnsw", args.dim, len(sub))
        hnsw.add(sub)
        memory = faiss.serialize_index(hnsw).nbytes
        measure(f"hnsw ({args.hnsw_n})", hnsw, sub_truth, sub_qps, memory, time.perf_counter() - start)
        del hnsw, sub_flat
    if "matryoshka" not in args.skip:
        for dim in (1024, 512, 256):
            if dim >= args.dim:
                continue
            cut = np.ascontiguousarray(base[:, :dim])
            cut /= np.linalg.norm(cut, axis=1, keepdims=True)
            q = np.ascontiguousarray(queries[:, :dim])
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            index = faiss.IndexFlatIP(dim)
            index.add(cut)
            start = time.perf_counter()
            _, ids = index.search(q, args.k)
            qps = len(q) / (time.perf_counter() - start)
            rows[f"matryoshka {dim}"] = {
                "recall@10": recall(ids, truth),
                "qps": qps,
                "speedup": qps / flat_qps,
                "memory_mb": cut.nbytes / 2**20,
            }
            print(f"matryoshka {dim}: recall@10 {rows[f'matryoshka {dim}']['recall@10']:.3f}", flush=True)
            del index, cut

    print()
    print(f"{'index':<32}{'recall@10':>10}{'QPS':>10}{'x flat':>8}{'memory MB':>11}{'build s':>9}")
    for name, row in rows.items():
        speed = f"{row['speedup']:.1f}" if "speedup" in row else "1.0"
        build = f"{row['build_s']:.0f}" if row.get("build_s") is not None else ""
        print(f"{name:<32}{row['recall@10']:>10.3f}{row['qps']:>10.1f}{speed:>8}{row['memory_mb']:>11.0f}{build:>9}")
    figures = {"n": args.n, "dim": args.dim, "queries": args.queries, "threads": args.threads}
    # headline figures (the presets `e5omni index --index KIND` builds): recall@10 against exact search, how many
    # times faster than exact its queries are, and its memory as a fraction of the flat index's
    for name, row in rows.items():
        kind = name.split(" (")[0]
        if name.startswith("ivfpq + exact"):
            figures["ivfpq_reranked_recall@10"] = round(row["recall@10"], 4)
            figures["ivfpq_reranked_speedup"] = round(row["speedup"], 2)
        if kind in ("ivf", "ivfpq") and " (nlist" in name:
            figures[f"{kind}_recall@10"] = round(row["recall@10"], 4)
            figures[f"{kind}_speedup"] = round(row["speedup"], 2)
            figures[f"{kind}_memory_vs_flat"] = round(row["memory_mb"] / rows["flat"]["memory_mb"], 4)
    figures["indexes"] = rows
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
