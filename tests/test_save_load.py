"""save_pretrained -> AutoModel/AutoProcessor(trust_remote_code=True) in a fresh, offline process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from e5omni.tiny import build_tiny_model

# Runs in a fresh interpreter where our packages cannot be imported: only the code copied next to the weights is used.
_CHILD = textwrap.dedent(
    """
    import json, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("modeling_e5omni", "train", "tests"):
                raise ImportError(f"{name} must not be importable here")
    sys.meta_path.insert(0, Block())
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor
    folder = sys.argv[1]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert type(processor).__name__ == "E5OmniProcessor"
    model.set_processor(processor)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    video = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    items = ["a red circle", image, {"video": video}, {"text": "mixed", "image": image}]
    if "audio" in model.config.modalities:
        t = np.arange(16000) / 16000
        items.append({"audio": {"array": np.sin(2 * np.pi * 440 * t).astype(np.float32), "sampling_rate": 16000}})
    emb = model.encode_document(items)
    query = model.encode_query(["a red circle"])
    print(json.dumps({
        "documents": emb.tolist(),
        "query": query.tolist(),
        "log_temperature": model.log_temperature.tolist(),
        "temperature_dtype": str(model.log_temperature.dtype),
        "whitening_mean": model.alignment.whitening_mean.tolist(),
        "whitening_matrix_00": model.alignment.whitening_matrix[0, :4].tolist(),
        "whitening": model.config.whitening,
    }))
    """
)


def _items(model):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    video = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    items = ["a red circle", image, {"video": video}, {"text": "mixed", "image": image}]
    if "audio" in model.config.modalities:
        t = np.arange(16000) / 16000
        items.append({"audio": {"array": np.sin(2 * np.pi * 440 * t).astype(np.float32), "sampling_rate": 16000}})
    return items


@pytest.mark.parametrize(
    "backbone",
    # one process start per backbone: the Qwen2-VL one (the same loading path) runs with the slow tests
    ["qwen2.5-omni", pytest.param("qwen2-vl", marks=pytest.mark.slow)],
)
def test_round_trip_in_a_fresh_offline_process(tmp_path, backbone):
    model, processor = build_tiny_model(backbone, seed=1, whitening=True)
    model.set_processor(processor)
    d = model.config.hidden_size
    with torch.no_grad():
        model.log_temperature.copy_(torch.log(torch.tensor([0.013, 0.0127, 0.0219, 0.0223])))
        model.alignment.whitening_mean.copy_(torch.linspace(-0.1, 0.1, d))
        model.alignment.whitening_matrix.copy_(torch.eye(d) + 0.01 * torch.ones(d, d))
    expected_docs = model.encode_document(_items(model))
    expected_query = model.encode_query(["a red circle"])
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_e5omni.E5OmniModel"
    assert "--" not in json.dumps(config["auto_map"])  # no owner/repo--module references
    assert json.loads((folder / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_e5omni.E5OmniProcessor"
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Same intra-op thread count as this process (conftest pins 1): float reductions then match bit for bit.
    env.update(
        HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1"
    )
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert torch.equal(torch.tensor(got["documents"]), expected_docs)
    assert torch.equal(torch.tensor(got["query"]), expected_query)
    assert torch.equal(torch.tensor(got["log_temperature"]), model.log_temperature.detach())
    assert got["temperature_dtype"] == "torch.float32"
    assert torch.equal(torch.tensor(got["whitening_mean"]), model.alignment.whitening_mean)
    assert got["whitening_matrix_00"] == pytest.approx([1.01, 0.01, 0.01, 0.01])
    assert got["whitening"] is True


def test_in_process_auto_classes_without_remote_code(tmp_path):
    """A pip user (our package imported) loads a folder with plain AutoModel, no trust_remote_code."""
    from transformers import AutoModel

    import modeling_e5omni

    model, processor = build_tiny_model("qwen2.5-omni", seed=2)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is modeling_e5omni.E5OmniModel
    model.set_processor(processor)
    assert torch.equal(loaded.encode_document(["hello"]), model.encode_document(["hello"]))


def test_init_tiny_cli_writes_a_complete_folder(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from e5omni.cli import main

    out = tmp_path / "tiny-vl"
    assert main(["init-tiny", str(out), "--backbone", "qwen2.5-vl", "--seed", "3"]) == 0
    auto = AutoModel.from_pretrained(out, trust_remote_code=True)
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    assert auto.config.backbone_config.model_type == "qwen2_5_vl"
    items = ["hello", {"text": "a picture", "image": Image.new("RGB", (56, 56), "red")}]
    assert (st.encode_document(items, convert_to_tensor=True) - auto.encode_document(items)).abs().max() < 1e-5
    with pytest.raises(FileExistsError, match="not empty"):
        main(["init-tiny", str(out)])
