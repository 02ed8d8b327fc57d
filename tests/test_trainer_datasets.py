"""The sentence-transformers training convention: E5OmniTrainer(train_dataset=Dataset | IterableDataset, evaluator=).

Streaming is checked for what it promises: rows are pulled as the trainer consumes them (counted at the generator),
memory while converting and collating a stream does not grow with its length (tracemalloc over 300 vs 3000 rows),
and a bad streamed row raises naming its stream row and column.
"""

from __future__ import annotations

import io
import tracemalloc

import datasets
import numpy as np
import pytest
import soundfile
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from e5omni.data import BadRowError, stream_hf_dataset
from e5omni.tiny import build_tiny_model
from e5omni.train.collator import E5OmniDataCollator
from e5omni.train.trainer import E5OmniTrainer
from tests.conftest import make_audio, make_image
from tests.helpers import training_args

WORDS = ["red", "green", "blue", "small", "large", "circle", "square", "left", "right", "beep"]


def _args(tmp_path, **overrides):
    """The shared trainer-test arguments with this module's batch size and the library's defaults for epochs and
    the temperature's learning rate."""
    defaults = dict(per_device_train_batch_size=4, num_train_epochs=3, temperature_lr=None)
    return training_args(tmp_path, **{**defaults, **overrides})


def _tiny():
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    return model


def _text(i: int) -> str:
    return f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} {WORDS[(i // 100) % 10]} #{i}"


def _omni_rows(n: int) -> dict:
    """A Dataset with Image / Audio features and a struct column (one item with text + image), as ST users build."""
    return {
        "anchor": [_text(i) for i in range(n)],
        "positive": [{"text": f"doc {_text(i)}", "image": make_image(i)} for i in range(n)],
        "negative": [{"bytes": _wav(i), "path": None} for i in range(n)],
    }


def _wav(seed: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, make_audio(seed, seconds=0.2)["array"], 16000, format="WAV")
    return buffer.getvalue()


def _omni_dataset(n: int) -> datasets.Dataset:
    features = datasets.Features(
        {
            "anchor": datasets.Value("string"),
            "positive": {"text": datasets.Value("string"), "image": datasets.Image()},
            "negative": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        }
    )
    # an Audio feature holding WAV bytes (casting, not encoding: writing audio needs torchcodec)
    return datasets.Dataset.from_dict(_omni_rows(n), features=features).cast_column("negative", datasets.Audio())


def test_trainer_takes_a_dataset_with_media_features_and_a_struct_column(tmp_path):
    ds = _omni_dataset(8)
    trainer = E5OmniTrainer(_tiny(), _args(tmp_path, max_steps=2), train_dataset=ds)
    assert trainer.num_negatives == 1  # the `negative` column
    example = trainer.train_examples[3]
    assert example["query"] == _text(3)
    assert example["positive"]["text"] == f"doc {_text(3)}" and example["positive"]["image"].size == (56, 56)
    assert example["negatives"][0]["audio"]["array"].dtype == np.float32
    batch = trainer.data_collator([{"example": 0}, {"example": 1}])
    assert batch["positive_modality_mask"].tolist() == [[1, 1, 0, 0]] * 2  # text + image in one item
    assert batch["negative_1_modality_mask"].tolist() == [[0, 0, 1, 0]] * 2
    result = trainer.train()
    assert result.global_step == 2 and np.isfinite(result.training_loss)


def test_plain_lists_and_the_positional_form_keep_working(tmp_path):
    examples = [{"query": _text(i), "positive": f"doc {_text(i)}"} for i in range(8)]
    trainer = E5OmniTrainer(_tiny(), _args(tmp_path, max_steps=1), examples)
    assert trainer.train().global_step == 1
    listed = E5OmniTrainer(_tiny(), _args(tmp_path, max_steps=1), train_dataset=examples)
    assert listed.train_examples is examples
    with pytest.raises(TypeError, match="not both"):
        E5OmniTrainer(_tiny(), _args(tmp_path), examples, train_dataset=examples)


def _counting_stream(n: int, pulled: list, bad_row: int | None = None):
    def rows():
        for i in range(n):
            pulled.append(i)
            text = "" if i == bad_row else _text(i)
            yield {"query": text, "positive": f"doc {_text(i)}", "negative_1": f"other {_text(i + 1)}"}

    features = datasets.Features({c: datasets.Value("string") for c in ("query", "positive", "negative_1")})
    return datasets.IterableDataset.from_generator(rows, features=features)


def test_trainer_streams_an_iterable_dataset_lazily(tmp_path):
    pulled: list[int] = []
    stream = _counting_stream(1_000_000, pulled)  # far more rows than the run reads
    trainer = E5OmniTrainer(_tiny(), _args(tmp_path, max_steps=3), train_dataset=stream)
    assert pulled == []  # nothing is read before training (no scan, no length)
    assert trainer.streaming and trainer.num_negatives == 1
    result = trainer.train()
    assert result.global_step == 3 and np.isfinite(result.training_loss)
    # 3 steps x 4 rows were consumed; the DataLoader may read ahead a little, never the stream
    assert 12 <= len(pulled) <= 64, len(pulled)


def test_a_bad_streamed_row_is_named(tmp_path):
    pulled: list[int] = []
    stream = _counting_stream(100, pulled, bad_row=5)
    trainer = E5OmniTrainer(_tiny(), _args(tmp_path, max_steps=3), train_dataset=stream)
    with pytest.raises(BadRowError, match=r"stream row 5: query: column 'query' has empty text"):
        trainer.train()


def test_streaming_memory_does_not_grow_with_the_stream():
    """Convert + collate-lookup a stream of 300 and of 3000 rows (each with a 4 kB text): the peak traced memory is
    the same, because no row is kept (the stream is never materialised)."""
    model = _tiny()

    def peak(n: int) -> int:
        def rows():
            for i in range(n):
                yield {"query": _text(i) + " x" * 2000, "positive": f"doc {_text(i)}"}

        features = datasets.Features({c: datasets.Value("string") for c in ("query", "positive")})
        stream = stream_hf_dataset(datasets.IterableDataset.from_generator(rows, features=features))
        collator = E5OmniDataCollator([], model.processor, 0, "Query: ", "", streams={0: stream})
        tracemalloc.start()
        seen = 0
        for row in stream.dataset:
            seen += len(collator.example(row)["query"])
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert seen > n * 4000
        return top

    small, large = peak(300), peak(3000)
    # materialising 3000 rows would hold >= 12 MB of text; the measured peaks differ by far less than one row-batch
    assert large < small * 1.5 + 256 * 1024, (small, large)


def test_evaluator_runs_on_the_trained_model(tmp_path):
    queries = {f"q{i}": _text(i) for i in range(6)}
    corpus = {f"d{i}": f"doc {_text(i)}" for i in range(6)}
    relevant = {f"q{i}": {f"d{i}"} for i in range(6)}
    evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, name="toy", show_progress_bar=False)
    examples = [{"query": _text(i), "positive": f"doc {_text(i)}"} for i in range(8)]
    trainer = E5OmniTrainer(
        _tiny(), _args(tmp_path, max_steps=1, eval_strategy="steps", eval_steps=1), examples, evaluator=evaluator
    )
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_toy_cosine_ndcg@10"] <= 1.0


def test_eval_dataset_gives_the_eval_loss(tmp_path):
    train = _omni_dataset(8)
    pulled: list[int] = []
    trainer = E5OmniTrainer(
        _tiny(),
        _args(tmp_path, max_steps=1, num_negatives=1),
        train_dataset=train,
        eval_dataset=_counting_stream(8, pulled),
    )
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"]) and len(pulled) == 8


DDP_STREAM_SCRIPT = """
import json, sys
import datasets, torch
from e5omni.tiny import build_tiny_model
from e5omni.train.trainer import E5OmniTrainer, E5OmniTrainingArguments

out = sys.argv[1]
seen = []
def rows():
    for i in range(10_000):
        seen.append(i)
        yield {"query": f"query number {i}", "positive": f"document number {i}"}
features = datasets.Features({c: datasets.Value("string") for c in ("query", "positive")})
stream = datasets.IterableDataset.from_generator(rows, features=features)
model, processor = build_tiny_model("qwen2.5-omni", seed=0)
model.set_processor(processor)
args = E5OmniTrainingArguments(output_dir=out, per_device_train_batch_size=4, max_steps=3, logging_steps=1,
    save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True, ddp_backend="gloo")
trainer = E5OmniTrainer(model, args, train_dataset=stream)
ranks_rows = []
orig = trainer.data_collator.example
def record(row):
    ranks_rows.append(int(row["__row__"]))
    return orig(row)
trainer.data_collator.example = record
result = trainer.train()
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"rows": ranks_rows, "step": result.global_step, "loss": result.training_loss,
               "world": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1}, f)
"""


@pytest.mark.slow
def test_two_ranks_stream_disjoint_rows(tmp_path):
    """Under torchrun (2 CPU ranks, gloo) each rank reads its own rows of the stream (accelerate's per-rank sharding,
    no batch dispatch) and both take the same steps with the same gathered loss."""
    import json
    import subprocess

    from tests.cli_runs import REPO, env, launcher

    script = tmp_path / "ddp_stream.py"
    script.write_text(DDP_STREAM_SCRIPT)
    result = subprocess.run(
        launcher(2, 29531) + [str(script), str(tmp_path)],
        env=env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["step"] == 3 for r in ranks)
    rows0, rows1 = set(ranks[0]["rows"]), set(ranks[1]["rows"])
    # 3 steps x 4 rows each (the trainer collates one batch ahead), and no row on both ranks
    assert 12 <= len(rows0) <= 16 and 12 <= len(rows1) <= 16 and not rows0 & rows1
    assert ranks[0]["loss"] == pytest.approx(ranks[1]["loss"])


def test_trainer_reads_audio_bytes_only_up_to_the_models_budget(tmp_path):
    """A 60 s WAV in a training Dataset is read no further than the model's max_audio_seconds (here 2 s), not whole."""
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(60 * 8_000, dtype=np.float32), 8_000, format="WAV")
    rows = {"anchor": ["a long recording"] * 4, "positive": [{"bytes": buf.getvalue(), "path": None}] * 4}
    # built as a struct and cast: encoding into an Audio feature needs torchcodec, which cannot load here
    ds = datasets.Dataset.from_dict(rows).cast_column("positive", datasets.Audio(decode=False))
    model = _tiny()
    model.config.max_audio_seconds = 2.0
    trainer = E5OmniTrainer(model, _args(tmp_path, max_steps=1), train_dataset=ds)
    with pytest.warns(UserWarning, match="truncated to max_audio_seconds=2"):
        audio = trainer.train_examples[0]["positive"]["audio"]
    assert audio["array"].shape == (2 * 8_000,)
