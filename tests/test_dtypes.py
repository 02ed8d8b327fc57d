"""The alignment state (temperatures, whitening) stays fp32 under every dtype and entry path, and a checkpoint that
lacks one alignment buffer re-initialises only that buffer."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig, AutoModel

from e5omni.release import save_hub_folder
from e5omni.tiny import build_tiny_model
from modeling_e5omni import E5OmniConfig, E5OmniModel, register

# Learned-looking values that bf16 cannot hold (bf16 has 8 significant bits: 0.016340 -> 0.016113).
TAUS = (0.013, 0.0127, 0.0219, 0.01634)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    with torch.no_grad():
        model.alignment.log_temperature.copy_(torch.tensor(TAUS).log())
        model.alignment.whitening_mean.fill_(1e-3 + 1e-7)  # not representable in half precision either
    return save_hub_folder(model, processor, tmp_path_factory.mktemp("dtypes") / "model")


def _check_alignment(model, dtype):
    alignment = model.alignment
    for name, tensor in [*alignment.named_parameters(), *alignment.named_buffers()]:
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, (name, tensor.dtype)
    assert alignment.log_temperature.exp().tolist() == pytest.approx(TAUS, rel=1e-6)
    assert alignment.whitening_mean[0].item() == pytest.approx(1e-3 + 1e-7, rel=1e-6)
    assert model.backbone.get_input_embeddings().weight.dtype == dtype  # the backbone itself is in the asked dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kwarg", ["dtype", "torch_dtype"])
def test_automodel_loads_keep_alignment_fp32(folder, dtype, kwarg):
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, **{kwarg: dtype})
    _check_alignment(model, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sentence_transformers_model_kwargs_keep_alignment_fp32(folder, dtype):
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu", model_kwargs={"dtype": dtype})
    _check_alignment(st[0].auto_model, dtype)


@pytest.mark.parametrize("cast", ["to", "half", "bfloat16"])
def test_casting_the_whole_model_keeps_alignment_fp32(folder, cast):
    model = E5OmniModel.from_pretrained(folder)
    if cast == "to":
        model = model.to(torch.bfloat16)
        dtype = torch.bfloat16
    else:
        model = getattr(model, cast)()
        dtype = torch.float16 if cast == "half" else torch.bfloat16
    _check_alignment(model, dtype)


def test_a_checkpoint_missing_one_buffer_keeps_the_learned_temperatures(folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = broken / "model.safetensors"
    state = load_file(str(weights))
    del state["alignment.whitening_updates"]
    save_file(state, str(weights), metadata={"format": "pt"})
    model = AutoModel.from_pretrained(broken, trust_remote_code=True)
    assert model.alignment.log_temperature.exp().tolist() == pytest.approx(TAUS, rel=1e-6)
    assert model.alignment.whitening_mean[0].item() == pytest.approx(1e-3 + 1e-7, rel=1e-6)
    assert int(model.alignment.whitening_updates) == 0  # only the missing buffer is initialised


def test_a_fresh_model_initialises_the_alignment_from_the_config():
    config = E5OmniConfig(**build_tiny_model("qwen2.5-omni", seed=0)[0].config.to_dict())
    config.temperature_init = 0.05
    model = E5OmniModel(config)
    assert model.alignment.log_temperature.tolist() == pytest.approx([math.log(0.05)] * 4)
    assert torch.equal(model.alignment.whitening_matrix, torch.eye(config.hidden_size))


def test_register_is_idempotent():
    register()
    register()
    assert AutoConfig.for_model("e5omni").__class__.__name__ == "E5OmniConfig"


@pytest.mark.parametrize("entry", ["E5OmniModel", "AutoModel", "built then cast"])
def test_temperature_is_fp32_in_bf16_model(folder, entry):
    """The bf16 model's own alignment state is fp32 and bit-identical to the saved one (tests/test_model.py's test of
    this name checked the fp32 fixture instead of the bf16 model it built)."""
    saved = load_file(str(folder / "model.safetensors"))
    if entry == "E5OmniModel":
        model = E5OmniModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    elif entry == "AutoModel":
        model = AutoModel.from_pretrained(folder, trust_remote_code=True, torch_dtype=torch.bfloat16)
    else:
        model = E5OmniModel(E5OmniConfig.from_pretrained(folder)).to(torch.bfloat16)
        model.load_state_dict(saved)
        model = model.to(torch.bfloat16)
    assert model.backbone.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.log_temperature.dtype == torch.float32
    for name, tensor in model.alignment.state_dict().items():
        expected = saved[f"alignment.{name}"]
        if expected.is_floating_point():
            assert tensor.dtype == torch.float32 and torch.equal(tensor, expected), name
        else:  # the update counter: its value (its dtype: the test below)
            assert tensor.item() == expected.item(), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_whitening_counter_stays_int64_under_half_precision_loads(folder, dtype):
    model = E5OmniModel.from_pretrained(folder, dtype=dtype)
    assert model.alignment.whitening_updates.dtype == torch.int64
