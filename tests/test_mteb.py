"""mteb on e5-omni models (mteb 2.x, offline): ModelMeta, prompts and instructions, mteb's media conventions, mteb's
own mock tasks for each modality pair, and our synthetic split as an mteb task scoring exactly what we score."""

from __future__ import annotations

import collections
import importlib.util
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing below may download (conftest sets it too; mteb reads it at import)

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

mteb = pytest.importorskip("mteb")

from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.mocks import ALL_MOCK_TASK_REGISTRY  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from e5omni.cli import main  # noqa: E402
from e5omni.data import to_corpus  # noqa: E402
from e5omni.data.synthetic import build_synthetic  # noqa: E402
from e5omni.evaluation import evaluate_retrieval, model_fingerprint  # noqa: E402
from e5omni.evaluation.mteb_model import (  # noqa: E402
    compare_with_mteb,
    mteb_model,
    retrieval_task,
    subset_name,
)
from e5omni.tiny import build_tiny  # noqa: E402
from modeling_e5omni.inputs_e5omni import E5OmniInputError  # noqa: E402
from tests.conftest import make_audio, make_video, tiny  # noqa: E402

HAS_TORCHCODEC = importlib.util.find_spec("torchcodec") is not None
NO_TORCHCODEC = (
    "mteb's audio mock tasks store audio with datasets' Audio feature, which needs torchcodec (not installed)"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved tiny Qwen2.5-Omni folder with a model card front matter (license, language, base model)."""
    out = build_tiny(tmp_path_factory.mktemp("mteb") / "tiny", backbone="qwen2.5-omni", seed=0)
    card = "---\nlicense: apache-2.0\nlanguage:\n- en\nbase_model: Qwen/Qwen2.5-Omni-3B\n---\n# tiny\n"
    (Path(out) / "README.md").write_text(card)
    return Path(out)


def _few(per_pair: int, seed: int = 0) -> list[dict]:
    """The first `per_pair` test examples of every pair of the synthetic split (all nine pairs)."""
    counts: collections.Counter = collections.Counter()
    kept = []
    for example in build_synthetic("test", seed=seed):
        if counts[example["pair"]] < per_pair:
            counts[example["pair"]] += 1
            kept.append(example)
    return kept


class _Spy:
    """Records what the encoder hands the model: (role, items) per encode call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __enter__(self):
        original = self.model.encode

        def encode(items, role="document", **kwargs):
            self.calls.append((role, list(items)))
            return original(items, role=role, **kwargs)

        self.model.encode = encode
        return self

    def __exit__(self, *exc):
        del self.model.encode  # back to the class's method


# ------------------------------------------------------------------------------------------------------- ModelMeta
def test_model_meta_comes_from_the_folder_and_reloads(folder):
    encoder = mteb_model(str(folder))
    meta, model = encoder.mteb_model_meta, encoder.model
    assert meta.modalities == ["text", "image", "audio", "video"] == list(model.config.modalities)
    assert meta.embed_dim == model.config.hidden_size and meta.max_tokens == model.config.max_length
    assert meta.n_parameters == sum(p.numel() for p in model.parameters())
    assert meta.revision == model_fingerprint(model)  # a local folder: the identity of its weights
    assert meta.name == "e5omni-local/tiny" and meta.loader_kwargs["path"] == str(folder.resolve())
    assert meta.license == "apache-2.0" and meta.languages == ["eng-Latn"]
    assert meta.adapted_from == "Qwen/Qwen2.5-Omni-3B"
    assert set(meta.framework) == {"PyTorch", "Transformers", "Sentence Transformers", "safetensors"}
    assert meta.similarity_fn_name.value == "cosine" and meta.use_instructions and meta.open_weights
    assert meta.release_date is not None
    # The meta's loader rebuilds an equal encoder from the meta alone. (ModelMeta.load_model first demands mteb's
    # audio/video extras, torchaudio + torchcodec, for any audio/video model, though this encoder needs neither.)
    if HAS_TORCHCODEC and importlib.util.find_spec("torchaudio") is not None:
        again = meta.load_model()
    else:
        again = meta.loader(meta.name, revision=meta.revision, **meta.loader_kwargs)
    probe = ["a red circle", {"video": make_video(1)}]
    assert torch.equal(again.model.encode_document(probe), model.encode_document(probe))


def test_model_meta_of_a_vl_model_and_of_overrides():
    vl = mteb_model(tiny("qwen2-vl"))
    assert vl.mteb_model_meta.modalities == ["text", "image", "video"]  # no audio tower: audio tasks are refused
    assert vl.mteb_model_meta.name == "e5omni-local/unsaved"
    with_license = mteb_model(tiny("qwen2-vl"), meta={"license": "mit", "training_datasets": {"MSRVTTT2V"}})
    assert with_license.mteb_model_meta.license == "mit"
    with pytest.raises(ValueError, match="license"):  # pydantic validates what a user sets
        mteb_model(tiny("qwen2-vl"), meta={"license": "not-a-license"})


# ------------------------------------------------------------------------------------------ prompts and instructions
def _metadata(prompt):
    return TaskMetadata(**{**ALL_MOCK_TASK_REGISTRY["MockRetrievalTask"].metadata.model_dump(), "prompt": prompt})


def test_task_instructions_map_to_our_instruction(omni_model):
    encoder = mteb_model(omni_model)
    plain = _metadata("Find the matching picture.")
    assert encoder.task_instruction(plain, PromptType.query) == "Find the matching picture."
    assert encoder.task_instruction(plain, PromptType.document) is None  # queries only, as e5-omni was trained
    assert mteb_model(omni_model, document_instructions=True).task_instruction(plain, PromptType.document)
    per_role = _metadata({"query": "Q instruction", "document": "D instruction"})
    assert encoder.task_instruction(per_role, PromptType.document) == "D instruction"
    overridden = mteb_model(omni_model, instructions={"MockRetrievalTask-query": "mine", "Retrieval": "by type"})
    assert overridden.task_instruction(plain, PromptType.query) == "mine"
    assert overridden.task_instruction(plain, PromptType.document) == "by type"
    assert encoder.task_instruction(_metadata(None), PromptType.query) is None  # no generic mteb fallback

    # through encode: the query prompt + instruction exactly as encode_query renders them; documents plain
    loader = DataLoader(
        Dataset.from_dict({"id": ["q0", "q1"], "text": ["a red circle", "a blue square"]}), batch_size=2
    )
    got = encoder.encode(
        loader, task_metadata=plain, hf_split="test", hf_subset="default", prompt_type=PromptType.query
    )
    items = [{"text": t, "instruction": "Find the matching picture."} for t in ("a red circle", "a blue square")]
    np.testing.assert_array_equal(got, omni_model.encode_query(items, convert_to_numpy=True))
    docs = encoder.encode(
        loader, task_metadata=plain, hf_split="test", hf_subset="default", prompt_type=PromptType.document
    )
    np.testing.assert_array_equal(docs, omni_model.encode_document(["a red circle", "a blue square"]).numpy())
    assert not np.allclose(got, docs)


def test_mteb_media_conventions(omni_model):
    """Videos as (T, 3, H, W) lists, with their soundtrack in the same row at 8 kHz: one item, resampled by us."""
    frames = [make_video(1), make_video(2)]  # (T, H, W, 3)
    audio = [make_audio(1, rate=8000), make_audio(2, rate=8000)]
    data = Dataset.from_dict(
        {
            "id": ["v0", "v1"],
            "video": [f.transpose(0, 3, 1, 2) for f in frames],  # channels first, as mteb's collators give them
            "audio": audio,
        }
    )
    encoder = mteb_model(omni_model)
    got = encoder.encode(
        DataLoader(data, batch_size=2), task_metadata=_metadata(None), hf_split="test", hf_subset="default"
    )
    expected = omni_model.encode_document([{"video": f, "audio": a} for f, a in zip(frames, audio, strict=True)])
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    video_only = omni_model.encode_document([{"video": f} for f in frames]).numpy()
    assert not np.allclose(got, video_only, atol=1e-3)  # the soundtrack is really part of the item


def test_a_bad_row_is_named_by_position_and_id(omni_model):
    data = Dataset.from_dict(
        {"id": ["a0", "a1"], "audio": [make_audio(1), {"array": make_audio(2)["array"], "sampling_rate": 1}]}
    )
    encoder = mteb_model(omni_model)
    with pytest.raises(E5OmniInputError, match=r"sampling_rate must lie in .*row 1, id 'a1'"):
        encoder.encode(DataLoader(data, batch_size=2), task_metadata=_metadata(None), hf_split="test", hf_subset="x")


# ------------------------------------------------------------------------------------------- mteb's own mock tasks
MOCK_RETRIEVAL = {  # task -> (query item keys, document item keys) the model must receive
    "MockRetrievalTask": ({"text"}, {"text"}),
    "MockInstructionRetrieval": ({"text", "instruction"}, {"text"}),
    "MockAny2AnyRetrievalI2T": ({"image"}, {"text"}),
    "MockAny2AnyRetrievalT2I": ({"text"}, {"image"}),
    "MockVideoRetrievalV2T": ({"video"}, {"text"}),
    "MockVideoRetrievalT2V": ({"text"}, {"video"}),
}
MOCK_AUDIO = ["MockAny2AnyRetrievalT2A", "MockAny2AnyRetrievalA2T", "MockAny2AnyRetrievalA2A"]


def test_mteb_mock_retrieval_tasks_for_every_modality_pair(omni_model, tmp_path, monkeypatch):
    monkeypatch.setenv("E5OMNI_MEDIA_CACHE", str(tmp_path / "media"))
    encoder = mteb_model(omni_model)
    tasks = [ALL_MOCK_TASK_REGISTRY[name]() for name in MOCK_RETRIEVAL]
    with _Spy(omni_model) as spy:
        results = mteb.evaluate(encoder, tasks, cache=None, show_progress_bar=False)
    assert not results.exceptions
    scores = {r.task_name: r.get_score() for r in results.task_results}
    assert set(scores) == set(MOCK_RETRIEVAL)
    assert all(0.0 < s <= 1.0 for s in scores.values()), scores
    roles = collections.defaultdict(set)
    for role, items in spy.calls:
        roles[role].add(frozenset().union(*(item.keys() for item in items)))
    for query_keys, doc_keys in MOCK_RETRIEVAL.values():
        assert frozenset(query_keys) in roles["query"] and frozenset(doc_keys) in roles["document"]
    # mteb's videos (mp4 bytes) reached the model as files our media code decodes; instructions as instructions
    videos = [item["video"] for _, items in spy.calls for item in items if "video" in item]
    # (files of the datasets adapter's content-addressed cache, named by the bytes' SHA-256)
    assert videos and all(isinstance(v, str) and Path(v).parent == tmp_path / "media" for v in videos)
    instructed = [item for role, items in spy.calls if role == "query" for item in items if "instruction" in item]
    assert {i["instruction"] for i in instructed} == {"This is a test instruction", "This is another test instruction"}


@pytest.mark.skipif(not HAS_TORCHCODEC, reason=NO_TORCHCODEC)
def test_mteb_mock_audio_retrieval_tasks(omni_model):
    results = mteb.evaluate(
        mteb_model(omni_model), [ALL_MOCK_TASK_REGISTRY[n]() for n in MOCK_AUDIO], cache=None, show_progress_bar=False
    )
    assert not results.exceptions and len(results.task_results) == len(MOCK_AUDIO)


@pytest.mark.slow
def test_mteb_mock_run_passes_every_compatible_mock_task(omni_model):
    """mteb's own model check (`mteb mock-run`): every mock task whose modalities the model has, all task types."""
    results = mteb.mock_run(mteb_model(omni_model))
    ran = {name: status for name, status in results.items() if status is not None}
    assert len(ran) > 40
    assert results.all_passed, results.to_markdown()
    skipped = [name for name, status in ran.items() if not hasattr(status, "get_score")]
    assert HAS_TORCHCODEC or set(skipped) >= set(MOCK_AUDIO)  # only missing torchcodec may skip a task


# --------------------------------------------------------------------------- our data as an mteb task: equal scores
def _agreement(model, examples):
    corpus = to_corpus(examples)
    ours = evaluate_retrieval(model, corpus, show_progress_bar=False)
    task = retrieval_task(corpus)
    results = mteb.evaluate(mteb_model(model), task, cache=None, show_progress_bar=False)
    assert not results.exceptions
    return ours, results.task_results[0], compare_with_mteb(ours, results.task_results[0])


def _check_agreement(ours, task_result, agreement):
    assert set(agreement) == {k for k in ours if "->" in k} and len(agreement) == 9
    compared = 0
    for pair, rows in agreement.items():
        assert set(rows) == {"hit@1", "hit@5", "hit@10", "recall@1", "recall@5", "recall@10", "ndcg@1", "ndcg@5",
                             "ndcg@10", "mrr"}  # fmt: skip
        for metric, row in rows.items():
            assert row["abs_diff"] <= 1e-6, (pair, metric, row)  # unrounded mteb vs ours
            if row["mteb"] is not None and metric != "mrr":  # mteb's reported scores are rounded to 5 decimals
                assert abs(row["mteb"] - row["ours"]) <= 5e-6 + 1e-12, (pair, metric, row)
            compared += 1
    assert compared == 90
    by_subset = {e["hf_subset"]: e for e in task_result.scores["test"]}
    assert by_subset[subset_name("text->image")]["main_score"] == pytest.approx(ours["text->image"]["ndcg@5"], abs=6e-6)
    assert max(ours[p]["mrr"] for p in agreement) > min(ours[p]["mrr"] for p in agreement)  # not all one value


def test_local_mteb_task_scores_exactly_what_we_score(omni_model):
    _check_agreement(*_agreement(omni_model, _few(4)))


@pytest.mark.slow
def test_local_mteb_task_on_the_full_synthetic_test_split(omni_model):
    _check_agreement(*_agreement(omni_model, build_synthetic("test", seed=0)))


# ----------------------------------------------------------------------------------------------------- command line
def test_cli_eval_with_mteb_writes_results_next_to_ours(folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", str(folder), "--data", "synthetic:test", "--limit", "18", "--output", str(out / "report.json")]
    code = main([*argv, "--mteb", "local,MockAny2AnyRetrievalT2I"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["mteb"]["agreement_with_ours"]["max_abs_diff"] <= 1e-6
    assert set(report["mteb"]["tasks"]) == {"E5OmniRetrieval", "MockAny2AnyRetrievalT2I"}
    results = list((out / "mteb" / "results").glob("e5omni-local__tiny/*/E5OmniRetrieval.json"))
    assert len(results) == 1
    saved = json.loads(results[0].read_text())
    assert {e["hf_subset"] for e in saved["scores"]["test"]} == {subset_name(p) for p in report["metrics"] if "->" in p}
    assert "largest difference" in capsys.readouterr().out


def test_cli_mteb_errors_are_named(folder, tmp_path, capsys):
    assert main(["eval", str(folder), "--mteb", "NoSuchTaskAnywhere", "--mteb-output", str(tmp_path)]) == 2
    assert "NoSuchTaskAnywhere" in capsys.readouterr().err
    assert main(["eval", str(folder), "--mteb", "local"]) == 2
    assert "give --data" in capsys.readouterr().err
    assert main(["eval", str(folder)]) == 2


def test_mteb_media_values_go_through_the_datasets_adapter(omni_model, tmp_path, monkeypatch):
    """mteb's media values are read by the one datasets media adapter (`media_value_to_item`): audio bytes are read
    no further than the model's budget (with a warning naming the row), and a value with only a relative path is
    refused naming the task, row and column instead of being resolved against the working directory."""
    import io

    import soundfile

    from e5omni.data.errors import DataError, Where
    from e5omni.evaluation.mteb_encoder import _to_item

    monkeypatch.setenv("E5OMNI_MEDIA_CACHE", str(tmp_path / "media"))
    buffer = io.BytesIO()
    soundfile.write(buffer, make_audio(1, seconds=3.0)["array"], 16000, format="WAV")
    where = Where("mteb task T (default/test), document", 4, "row")
    with pytest.warns(UserWarning, match=r"row 4.*'audio'.*truncated to max_audio_seconds=1"):
        item = _to_item({"audio": {"bytes": buffer.getvalue(), "path": "a.wav"}}, "document", None, where, 1.0)
    assert item["audio"]["array"].shape == (16000,) and item["audio"]["sampling_rate"] == 16000
    with pytest.raises(DataError, match=r"row 4.*relative path 'clip\.mp4'"):
        _to_item({"video": {"bytes": None, "path": "clip.mp4"}}, "document", None, where, 30.0)
    # and through the encoder: a bad row's error names the mteb row, nothing is read from the cwd
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    monkeypatch.chdir(tmp_path)
    encoder = mteb_model(omni_model)
    rows = Dataset.from_dict({"id": ["d0"], "video": [{"bytes": None, "path": "clip.mp4"}]})
    metadata = ALL_MOCK_TASK_REGISTRY["MockVideoRetrievalT2V"]().metadata
    with pytest.raises(DataError, match=r"row 0, column 'video'"):
        encoder.encode(DataLoader(rows, batch_size=2), task_metadata=metadata, hf_split="test", hf_subset="default")
