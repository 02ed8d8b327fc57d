"""Served forms of an e5-omni model: `export_vllm` writes a folder that vLLM serves as a pooling model."""

from e5omni.export.to_vllm import ExportError, embedding_chat_template, export_vllm, vllm_weight_name

__all__ = ["ExportError", "embedding_chat_template", "export_vllm", "vllm_weight_name"]
