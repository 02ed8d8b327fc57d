"""peft as its users call it on e5-omni folders: `AutoPeftModel` on an adapter folder, and a merged model's own
`save_pretrained` reloaded through AutoModel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

peft = pytest.importorskip("peft", reason="needs peft (the [train] extra)")

from transformers import AutoModel  # noqa: E402

from e5omni.release import save_hub_folder  # noqa: E402
from e5omni.tiny import build_tiny_model  # noqa: E402
from e5omni.train.lora import apply_lora, lora_config, save_adapter  # noqa: E402
from tests.conftest import make_image  # noqa: E402

PROBES = ["a red circle on the left", {"image": make_image(7)}, {"text": "beeps", "image": make_image(8)}]


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory):
    """A base folder, an adapter with non-zero LoRA weights (no training needed for loading checks), and the vectors
    of the model that carried them."""
    tmp = tmp_path_factory.mktemp("peft-clients")
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    model.set_processor(processor)
    save_hub_folder(model, processor, tmp / "base")
    model = apply_lora(model, lora_config(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero: a zero adapter would change nothing
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.eval()
    want = model.encode_query(PROBES)
    untouched, untouched_processor = build_tiny_model("qwen2.5-omni", seed=0)
    untouched.set_processor(untouched_processor)
    assert (want - untouched.eval().encode_query(PROBES)).abs().max() > 1e-3  # the adapter changes the vectors
    save_adapter(model, tmp / "adapter", base_model_name_or_path=tmp / "base")
    return {"tmp": tmp, "base": tmp / "base", "adapter": tmp / "adapter", "want": want}


def _close(model, want, tol=1e-5):
    model.eval()
    return float((model.encode_query(PROBES) - want).abs().max()) < tol


def test_auto_peft_model_loads_the_adapter_as_documented(adapter_run):
    """The adapter's auto_mapping names transformers' AutoModel (in peft's default import allowlist), which reads the
    base folder's auto_map: AutoPeftModel loads it with no import_allowlist, from the Hub repo alone."""
    mapping = json.loads((adapter_run["adapter"] / "adapter_config.json").read_text())["auto_mapping"]
    assert mapping == {"base_model_class": "AutoModel", "parent_library": "transformers"}
    model = peft.AutoPeftModel.from_pretrained(str(adapter_run["adapter"]), trust_remote_code=True)
    assert _close(model, adapter_run["want"])


def _merged(adapter_run):
    base = AutoModel.from_pretrained(adapter_run["base"], trust_remote_code=True)
    return peft.PeftModel.from_pretrained(base, adapter_run["adapter"]).merge_and_unload().eval()


def test_merged_model_save_pretrained_reloads_and_encodes(adapter_run, tmp_path):
    merged = _merged(adapter_run)
    assert _close(merged, adapter_run["want"])
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModel.from_pretrained(tmp_path / "merged", trust_remote_code=True)
    assert _close(reloaded, adapter_run["want"])


def test_merged_model_saved_with_its_processor_reloads_everywhere(adapter_run, tmp_path):
    """The documented route today: save_hub_folder (weights, code, processor and the sentence-transformers files)."""
    from sentence_transformers import SentenceTransformer

    merged = _merged(adapter_run)
    save_hub_folder(merged, merged.processor, tmp_path / "merged")
    assert _close(AutoModel.from_pretrained(tmp_path / "merged", trust_remote_code=True), adapter_run["want"])
    st = SentenceTransformer(str(tmp_path / "merged"), trust_remote_code=True, device="cpu")
    got = st.encode_query(PROBES[:1], convert_to_numpy=True)
    assert np.abs(got - adapter_run["want"][:1].numpy()).max() < 1e-5
