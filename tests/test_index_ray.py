"""`e5omni index --engine ray`: the Ray Data engine gives the local engine's shards, vectors and errors file.

One local Ray cluster (2 CPUs) for the module, for the slow tests (starting it takes ~20 s here, each test 15-40 s):
they compare the engines on the salted folder, resume an interrupted index shard by shard and kill -9 the CLI. The
default test runs the engine's two steps (the decode task and the Embedder actor's call) in this process, on the
rows Ray would carry, and checks they give what the local engine gives; test_index_damage.py checks (fast) that an
unreachable cluster is refused before --out is touched.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e5omni.cli.common import load_inference_model
from e5omni.index import build_corpus, read_manifest
from e5omni.index.search import read_shards
from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model
from tests.cli_runs import REPO, env
from tests.helpers import kill_9_after_shards, salted_folder, text_corpus

ray = pytest.importorskip("ray", reason="Ray Data comes with the [index] extra")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    return save_hub_folder(model, processor, tmp_path_factory.mktemp("ray-model") / "m")


@pytest.fixture(scope="module")
def model(model_dir):
    return load_inference_model(str(model_dir))  # what the actors load: the same fingerprint


def _same_index(a: Path, b: Path) -> None:
    rows_a, vectors_a = read_shards(a)
    rows_b, vectors_b = read_shards(b)
    assert rows_a == rows_b  # ids, sources, modalities, content hashes, in the same order
    assert vectors_a.shape == vectors_b.shape and np.abs(vectors_a - vectors_b).max() < 1e-5
    assert (a / "errors.jsonl").read_text() == (b / "errors.jsonl").read_text()
    assert (a / "warnings.jsonl").read_text() == (b / "warnings.jsonl").read_text()
    manifest_a, manifest_b = read_manifest(a), read_manifest(b)
    for key in ("shards", "counts", "contract", "model", "finished"):
        assert manifest_a[key] == manifest_b[key], key


def test_ray_engine_steps_in_process_give_the_local_engines_shard(model, model_dir, tmp_path):
    """`_decode_row` (a Ray CPU task) and `Embedder` (an actor) called here on the rows the driver builds, merged
    as the driver merges them: the vectors, failures, warnings and modality masks of the local engine."""
    import pickle

    from e5omni.index.batches import ShardBatches, embed_chunk
    from e5omni.index.ray_engine import Embedder, _decode_row
    from e5omni.index.sources import iter_folder
    from tests.helpers import write_clip

    folder, _, _ = salted_folder(tmp_path)
    write_clip(folder / "loud.mkv")  # a video with its audio track: audio + video in the mask
    (folder / "long.txt").write_text("word " * (model.config.max_length * 2))
    records = list(iter_folder(folder))
    local = embed_chunk(model, records, 3, None)
    shard = ShardBatches(records)
    embedder = Embedder(str(model_dir), None)
    for b, items in enumerate(shard.batches(3)):
        row = _decode_row({"shard": 0, "batch": b, "payload": pickle.dumps(items)}, str(model_dir))
        out = embedder({key: np.array([value], dtype=object) for key, value in row.items()})
        kept = json.loads(out["kept"][0])
        vectors = np.frombuffer(out["vectors"][0], dtype=np.float32).reshape(len(kept), -1) if kept else []
        failures, notes, masks = (json.loads(out[key][0]) for key in ("failures", "notes", "masks"))
        shard.merge(b * 3, kept, vectors, failures, notes, masks)
    assert shard.failures == local.failures and shard.notes == local.notes and shard.masks == local.masks
    assert sorted(shard.vectors) == sorted(local.vectors)
    assert max(np.abs(shard.vectors[i] - local.vectors[i]).max() for i in local.vectors) < 1e-5
    loud = next(i for i, r in enumerate(shard.good) if r.id == "loud.mkv")
    assert shard.masks[loud] == [False, False, True, True]


@pytest.mark.slow
def test_ray_engine_equals_the_local_engine_on_a_salted_folder(cluster, model, model_dir, tmp_path):
    folder, good, bad = salted_folder(tmp_path)
    (folder / "long.txt").write_text("word " * (model.config.max_length * 2))  # embedded with a warning
    good = {*good, "long.txt"}
    local, distributed = tmp_path / "local", tmp_path / "ray"
    kwargs = {"shard_size": 4, "batch_size": 3, "show_progress_bar": False, "model_path": str(model_dir)}
    build_corpus(model, folder, local, **kwargs)
    summary = build_corpus(model, folder, distributed, engine="ray", **kwargs)
    assert (summary.embedded, summary.failed, summary.warned) == (len(good), len(bad), 1)
    assert read_manifest(distributed)["engine"] == "ray"
    errors = {e["id"]: e["error"] for e in map(json.loads, (distributed / "errors.jsonl").read_text().splitlines())}
    assert errors == {
        "bomb.png": "MediaTooLargeError",
        "corrupt.png": "MediaDecodeError",
        "truncated.mp4": "MediaDecodeError",
        "escape.txt": "UnsafeMediaPathError",
        "pipe.wav": "UnsafeMediaPathError",
    }
    _same_index(local, distributed)


@pytest.mark.slow
def test_ray_engine_resumes_an_interrupted_index_by_shard(cluster, model, model_dir, tmp_path):
    """What a kill leaves (finished shards in the manifest, a shard file and error lines of an unfinished one, a
    gap: ray finishes shards out of order) is resumed by the ray engine into the uninterrupted index."""
    folder = text_corpus(tmp_path, 14)  # 15 records (one broken) in 4 shards of 4
    kwargs = {"shard_size": 4, "batch_size": 2, "show_progress_bar": False, "model_path": str(model_dir)}
    reference = tmp_path / "reference"
    build_corpus(model, folder, reference, **kwargs)
    killed = tmp_path / "killed"
    shutil.copytree(reference, killed)
    manifest = read_manifest(killed)
    manifest["shards"] = [s for s in manifest["shards"] if s["name"] in ("00001.parquet", "00003.parquet")]
    manifest["finished"] = False
    del manifest["counts"]
    (killed / "manifest.json").write_text(json.dumps(manifest))
    (killed / "shards" / "00002.parquet").unlink()  # shard 0 stays, written but not in the manifest: redone
    assert json.loads((killed / "errors.jsonl").read_text())["shard"] == 0  # the broken file's line: dropped
    summary = build_corpus(model, folder, killed, resume=True, engine="ray", **kwargs)
    assert (summary.embedded, summary.failed) == (14, 1)
    _same_index(reference, killed)


@pytest.mark.slow
def test_kill_9_mid_ray_run_then_resume_holds_every_id_once(model, model_dir, tmp_path):
    folder = text_corpus(tmp_path, 40)
    reference = tmp_path / "reference"
    build_corpus(model, folder, reference, shard_size=2, batch_size=2, show_progress_bar=False)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "e5omni.cli", "index", str(model_dir), str(folder), "--out", str(killed)]
    cmd += ["--shard-size", "2", "--batch-size", "2", "--no-progress", "--engine", "ray"]
    assert kill_9_after_shards(cmd, killed, 3, 300) < 21, "the run finished before it could be killed"
    resumed = subprocess.run(cmd + ["--resume"], env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # the broken file: exit 1, the rest embedded
    rows, vectors = read_shards(killed)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 40
    _same_index(reference, killed)
    assert json.loads(resumed.stdout)["failed"] == 1
