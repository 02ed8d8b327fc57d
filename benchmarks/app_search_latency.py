"""Latency of one search of the page (`SearchEngine.search`: embed the query, rank, calibrate) on a 100k-item index.

    python benchmarks/app_search_latency.py [--items 100000] [--repeats 20] [--dims 64,2048]

A tiny seeded model (`e5omni.tiny`) indexes the demo corpus for real; the index is then grown in memory to `--items`
rows with random unit vectors (flat faiss, exact). For each `--dims` D the faiss part is also timed alone on a
flat index of that width (3584 = a 7B backbone), side by side with the page's full search. Medians are reported; the
model is loaded before timing. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import faiss
    import torch

    from e5omni.app.demo import write_demo_corpus
    from e5omni.app.engine import Query, SearchEngine
    from e5omni.app.media import MediaStore
    from e5omni.index import CorpusIndex, build_corpus
    from e5omni.tiny import build_tiny_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dims", default="64,2048,3584")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_demo_corpus(corpus, n=16)
        build_corpus(model, corpus, Path(tmp) / "index", show_progress_bar=False)
        index = CorpusIndex.build(Path(tmp) / "index")
        rng = np.random.default_rng(0)
        dim = index.index.d
        extra = args.items - index.index.ntotal
        vectors = rng.standard_normal((extra, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index.index.add(vectors)
        index.rows += [
            {"id": f"synthetic-{i}", "source": "", "modalities": ["text"], "content_hash": None} for i in range(extra)
        ]
        engine = SearchEngine(model, index, MediaStore.from_index(index.rows, corpus, model_config=model.config))
        image = str(next((corpus / "images").iterdir()))
        results = {}
        for name, query in (("text", Query(text="a red circle at the top")), ("image", Query(image=image))):
            engine.search(query, k=12)
            times = []
            for _ in range(args.repeats):
                outcome = engine.search(query, k=12)
                assert outcome.error is None and len(outcome.results) == 12
                times.append(outcome.seconds)
            results[f"page_search_{name}_ms"] = round(1000 * statistics.median(times), 2)
        for d in (int(x) for x in args.dims.split(",")):
            flat = faiss.IndexFlatIP(d)
            block = rng.standard_normal((args.items, d)).astype(np.float32)
            flat.add(block / np.linalg.norm(block, axis=1, keepdims=True))
            q = block[:1].copy()
            times = []
            for _ in range(max(3, args.repeats // 4)):
                start = time.perf_counter()
                flat.search(q, 12)
                times.append(time.perf_counter() - start)
            results[f"faiss_flat_{d}d_ms"] = round(1000 * statistics.median(times), 2)
            del flat, block
    results["items"] = args.items
    for key, value in results.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
