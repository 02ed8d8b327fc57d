"""The Ray Data engine of `e5omni index` (`--engine ray`): the local engine's job, spread over a Ray cluster.

    driver: records (sources.py) -> shards of `shard_size` -> model batches of `batch_size` good records
    Ray Data: from_items(batches) -> map(decode + process: CPU tasks) -> map_batches(embed: an actor pool)
    driver: batches back into shards -> the same writer as the local engine (shards, manifest, errors.jsonl)

The batches are cut exactly as the local engine cuts them (the good records of one shard, `batch_size` at a time, in
source order), and a bad item is taken out of its batch the same way (decode errors item by item, processing errors
by the index the processor names), so every vector is computed from the same padded batch as the local engine's and
equals it; the tests check that to 1e-5 (on CPU it is exact). A user with a cluster adds machines, not code:

- decode + process runs in CPU tasks (`ray.data.Dataset.map`, one CPU each): `normalize_item` under the model's
  budgets, then `E5OmniProcessor.process_decoded`; the tensors travel to the actors as an `.npz` blob (no pickle);
- embedding runs in `num_actors` actors (default: one per GPU of the cluster, each holding one GPU; one on a
  cluster without GPUs), each loading the model once from `model_path` and checking its fingerprint against the
  driver's (a path that changed under a running job is refused, not mixed into one index);
- the driver writes the Parquet shards as their batches come back, in whatever order shards finish; one writer keeps
  the manifest, errors.jsonl and resume consistent (each vector is 4 * D bytes: the driver is never the
  bottleneck next to the model). Resume is by shard, as for the local engine: a finished shard is in the manifest.

Ray is imported only here, so `e5omni index` without `--engine ray` never imports it. The cluster is the one at
`address` (`ray.init(address=...)`: "auto", "ray://host:10001"), the one this process already joined, or a local
one started for the job and shut down after it. Every node needs e5-omni installed, and the model path must be
readable from every node (a Hub id or a shared folder). `DataError`s of the sources are recorded by the driver as for
the local engine; the items themselves (paths for folders and tables, decoded rows for `hub:` sources) are held by
the driver while the job runs.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np

from e5omni.index.batches import ShardBatches, decode_and_process, embed_features
from e5omni.index.errors import IndexBuildError
from e5omni.index.sources import Record

_PROCESSORS: dict[str, Any] = {}


def _processor(model_path: str):
    """The model's processor, loaded once per Ray worker process (tasks of one job reuse their workers)."""
    if model_path not in _PROCESSORS:
        from modeling_e5omni.processing_e5omni import E5OmniProcessor

        _PROCESSORS[model_path] = E5OmniProcessor.from_pretrained(model_path)
    return _PROCESSORS[model_path]


def _pack(features: dict[str, Any] | None) -> bytes:
    if features is None:
        return b""
    buffer = io.BytesIO()
    np.savez(buffer, **{key: value.numpy() for key, value in features.items()})
    return buffer.getvalue()


def _decode_row(row: dict[str, Any], model_path: str) -> dict[str, Any]:
    """Ray task: one model batch of items -> its tensors (an .npz blob), the positions kept, the failures, the
    warnings."""
    items = pickle.loads(row["payload"])  # written by this job's driver, never read from user files
    features, kept, failures, notes = decode_and_process(_processor(model_path), items)
    return {
        "shard": row["shard"],
        "batch": row["batch"],
        "features": _pack(features),
        "kept": json.dumps(kept),
        "failures": json.dumps({str(k): v for k, v in failures.items()}),
        "notes": json.dumps({str(k): v for k, v in notes.items()}),
        "masks": json.dumps(features["modality_mask"].tolist() if features is not None else []),
    }


def _decode_task_args() -> dict[str, Any]:
    return {"num_cpus": 1}


class Embedder:
    """Ray actor: loads the model once (on its GPU when it has one) and embeds batches of processed tensors."""

    def __init__(self, model_path: str, truncate_dim: int | None):
        from e5omni.evaluation.embeddings import model_fingerprint
        from e5omni.loading import load_inference_model

        self.model = load_inference_model(model_path).eval()
        self.fingerprint = model_fingerprint(self.model)
        self.truncate_dim = truncate_dim

    def embed(self, blob: bytes) -> np.ndarray:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            features = {key: data[key] for key in data.files}
        return embed_features(self.model, features, self.truncate_dim)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        vectors = []
        for blob, kept in zip(batch["features"], batch["kept"], strict=True):
            blob = bytes(blob)
            vectors.append(self.embed(blob).tobytes() if json.loads(str(kept)) else b"")
        return {
            "shard": batch["shard"],
            "batch": batch["batch"],
            "kept": batch["kept"],
            "failures": batch["failures"],
            "notes": batch["notes"],
            "masks": batch["masks"],
            "vectors": np.array(vectors, dtype=object),
            "fingerprint": np.array([self.fingerprint] * len(vectors), dtype=object),
        }


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A `host:port` / `ray://host:port` address whose port does not answer is refused at once (ray.init would retry
    for minutes); "auto" and None are left to Ray (it finds a running cluster or says there is none)."""
    import socket

    if not address or address == "auto" or address.startswith("local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise IndexBuildError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise IndexBuildError(
            f"cannot reach the Ray cluster at {address!r}: {err.strerror or err} (is it running? `ray start --head` "
            "starts one; leave out --ray-address for a local one)"
        ) from err


def connect(address: str | None) -> bool:
    """Join the cluster at `address` ("auto", "ray://host:10001"), the one this process already joined, or start a
    local one (address None); True when this call started or joined it (the caller shuts it down after the job).
    A cluster that cannot be reached is an IndexBuildError saying so, raised before the index folder is touched."""
    try:
        import ray
    except ImportError as err:  # pragma: no cover - the [index] extra installs it
        raise ImportError("--engine ray needs Ray Data: pip install 'e5-omni[index]'") from err
    if ray.is_initialized():
        return False
    _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        where = repr(address) if address else "a new local cluster"
        hint = " (start one with `ray start --head`, or leave out --ray-address for a local one)" if address else ""
        raise IndexBuildError(f"cannot reach the Ray cluster at {where}: {err}{hint}") from err
    return True


def ray_engine(
    model_path: str,
    chunks: Iterator[tuple[int, list[Record]]],
    *,
    batch_size: int,
    truncate_dim: int | None,
    fingerprint: str,
    num_actors: int | None = None,
) -> Iterator[tuple[int, ShardBatches]]:
    """(number, shard) per shard, as `build._local_engine` yields them, in finishing order, on the cluster `connect`
    joined. Closing the generator stops the pipeline."""
    import ray

    pending: dict[int, dict[str, Any]] = {}
    batches: list[dict[str, Any]] = []
    empty = []
    for number, chunk in chunks:
        shard = ShardBatches(chunk)
        items = shard.batches(batch_size)
        pending[number] = {"shard": shard, "left": len(items)}
        if not items:
            empty.append(number)
        for b, batch in enumerate(items):
            batches.append({"shard": number, "batch": b, "payload": pickle.dumps(batch)})

    def finish(number: int):
        return number, pending.pop(number)["shard"]

    for number in empty:  # nothing to embed: every record of the shard is an error of its source
        yield finish(number)
    if not batches:
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # build_corpus shows one bar for the whole job
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = num_actors or max(gpus, 1)
    ds = ray.data.from_items(batches, override_num_blocks=min(len(batches), 4096))
    # decode runs in CPU tasks of its own: Ray Data would otherwise fuse a task map into the actor map after
    # it (decoding inside the embedding actors, one after the other); remote args from a function are never
    # fused (ray.data._internal.logical.rules.operator_fusion.are_op_remote_args_compatible)
    ds = ds.map(_decode_row, fn_kwargs={"model_path": model_path}, ray_remote_args_fn=_decode_task_args)
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={"model_path": model_path, "truncate_dim": truncate_dim},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        **({"num_gpus": 1} if gpus else {"num_cpus": 1}),
    )
    for row in ds.iter_rows():
        if row["fingerprint"] != fingerprint:
            raise IndexBuildError(
                f"the Ray actors loaded another model from {model_path} (fingerprint {row['fingerprint'][:12]}, "
                f"the driver's is {fingerprint[:12]}): did the folder change during the run?"
            )
        number, b = int(row["shard"]), int(row["batch"])
        state = pending[number]
        kept = json.loads(row["kept"])
        vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(kept), -1) if kept else []
        failures, notes, masks = (json.loads(row[key]) for key in ("failures", "notes", "masks"))
        state["shard"].merge(b * batch_size, kept, vectors, failures, notes, masks)
        state["left"] -= 1
        if state["left"] == 0:
            yield finish(number)
