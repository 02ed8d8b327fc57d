"""The sentence-transformers input module of e5-omni (shipped next to the weights, used via modules.json).

`SentenceTransformer(folder, trust_remote_code=True)` builds [E5OmniSTModule, Pooling(D, "lasttoken"), Normalize()]:
this module turns omni items into backbone inputs with `E5OmniProcessor` and returns the backbone's
`token_embeddings`; sentence-transformers' own last-token pooling and normalisation then give exactly the vectors of
`E5OmniModel.encode_*`. Prompts come from config_sentence_transformers.json ("query": "Query: ", "document": "").
When whitening is enabled in the config the folder lists [E5OmniSTModule, Normalize()] instead and this module emits
the whitened `sentence_embedding` itself.

This file imports sentence_transformers; `modeling_e5omni` itself never imports it.
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.base.modules.input_module import InputModule

from .modeling_e5omni import E5OmniModel
from .processing_e5omni import E5OmniProcessor, check_items, normalize_item


class E5OmniSTModule(InputModule):
    """Omni-modal input module: items (str, PIL image, dicts of text/image/audio/video) -> token embeddings."""

    save_in_root = True
    config_keys: list[str] = []

    def __init__(self, model: E5OmniModel, processor: E5OmniProcessor | None = None):
        super().__init__()
        self.auto_model = model
        self.processor = processor if processor is not None else model.processor
        self.auto_model.set_processor(self.processor)
        self.tokenizer = self.processor.tokenizer

    @property
    def modalities(self) -> list[str]:
        # "message" lets sentence-transformers hand us dicts that combine modalities; we validate them ourselves.
        return [*self.auto_model.config.modalities, "message"]

    def get_embedding_dimension(self) -> int:
        return self.auto_model.config.hidden_size

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, Any]:
        config = self.auto_model.config
        items = check_items(inputs, config.modalities)
        decoded = [normalize_item(item, i, config) for i, item in enumerate(items)]
        return dict(self.processor.process_decoded(decoded, role="document", prompt=prompt))

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        output = self.auto_model(**features)
        features["token_embeddings"] = output.last_hidden_state
        if self.auto_model.config.whitening:
            features["sentence_embedding"] = output.embeddings
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.auto_model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.processor.save_pretrained(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> E5OmniSTModule:
        hub = {"token": token, "cache_dir": cache_folder, "revision": revision, "local_files_only": local_files_only}
        if subfolder:
            hub["subfolder"] = subfolder
        model_kwargs = dict(model_kwargs or {})
        model = E5OmniModel.from_pretrained(model_name_or_path, **hub, **model_kwargs)
        processor = E5OmniProcessor.from_pretrained(model_name_or_path, config=model.config, **hub)
        return cls(model, processor)


def sentence_transformer(model: E5OmniModel, processor: E5OmniProcessor | None = None, device: str | None = None):
    """Build the `SentenceTransformer` for an in-memory model (same modules and prompts as a saved folder)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    config = model.config
    modules: list[torch.nn.Module] = [E5OmniSTModule(model, processor)]
    if not config.whitening:
        modules.append(Pooling(config.hidden_size, pooling_mode="lasttoken"))
    modules.append(Normalize())
    return SentenceTransformer(
        modules=modules,
        device=device or "cpu",
        prompts={"query": config.query_prompt, "document": config.document_prompt},
        default_prompt_name=None,
        similarity_fn_name="cosine",
    )


__all__ = ["E5OmniSTModule", "sentence_transformer"]
