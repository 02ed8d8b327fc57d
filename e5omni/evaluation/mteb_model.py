"""mteb for e5-omni: an encoder for any of our folders, Hub ids or in-memory models, and our data as an mteb task.

    import mteb
    from e5omni.evaluation import mteb_model
    results = mteb.evaluate(mteb_model("path/or/hub-id"), mteb.get_tasks(tasks=["MSRVTTT2V"]))

:func:`mteb_model` returns an :class:`E5OmniMTEBEncoder` (an ``mteb.models.AbsEncoder``) whose ``mteb_model_meta``
is filled from the model itself: modalities from ``config.modalities`` (so image, audio and video tasks are not
refused), embedding dimension, ``max_length``, parameter count, revision (the Hub commit, or the
:func:`~e5omni.evaluation.model_fingerprint` of a local or unsaved model), license / languages / base model from the
folder's model card, frameworks from the files the folder holds. What the encoder does with mteb's inputs:

- **prompts**: ``prompt_type`` query -> ``encode_query`` (the config's query prompt, ``"Query: "``), document or
  none -> ``encode_document``; nothing has to be put into ``model_prompts`` by hand.
- **instructions**: the task's own ``metadata.prompt`` becomes the query's ``instruction`` (a ``{"query",
  "document"}`` prompt maps per role; a plain string applies to queries only unless ``document_instructions=True``);
  a per-row ``instruction`` column (instruction-retrieval tasks) wins over it; ``instructions={"TaskName": ...,
  "Any2AnyRetrieval-query": ...}`` overrides both, with mteb's key rules (task name, task type, ``-query`` /
  ``-document`` suffixes). mteb's generic fallback ("Retrieve text based on user query.") is not used: it names the
  wrong modality for most omni tasks.
- **media**: audio and video columns are read undecoded and decoded by our own media code under the config's budgets
  (16 kHz resampling, ``max_audio_seconds``, ``fps`` / ``max_frames`` video sampling), exactly as ``e5omni eval``
  decodes files, so no torchcodec is needed. A row with both ``video`` and ``audio`` is one item: the frames with
  their soundtrack. Videos given as arrays or tensors may be ``(T, H, W, 3)`` or mteb's ``(T, 3, H, W)``.

:func:`retrieval_task` turns our own data (a :class:`~e5omni.data.RetrievalCorpus` or training-style examples) into
an mteb retrieval task with one subset per modality pair, each ranked against that pair's pool as
:func:`~e5omni.evaluation.evaluate_retrieval` ranks it; :func:`compare_with_mteb` states how the two sets of numbers
correspond and how far apart they are.

The integration lives in four modules, re-exported here: :mod:`~e5omni.evaluation.mteb_encoder` (the encoder and
how mteb rows become items), :mod:`~e5omni.evaluation.mteb_meta` (``ModelMeta``), :mod:`~e5omni.evaluation.mteb_task`
(our data as a task) and :mod:`~e5omni.evaluation.mteb_compare` (our metrics vs mteb's).
"""

from __future__ import annotations

try:  # the [mteb] extra; everything below needs it
    import mteb  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("e5omni.evaluation.mteb_model needs mteb: pip install 'e5-omni[mteb]'") from err

from e5omni.evaluation.mteb_compare import MTEB_METRIC_MAP, compare_with_mteb  # noqa: E402
from e5omni.evaluation.mteb_encoder import (  # noqa: E402
    E5OmniMTEBEncoder,
    e5omni_model_meta,  # noqa: E402
    mteb_model,
)
from e5omni.evaluation.mteb_task import E5OmniRetrievalTask, retrieval_task, subset_name  # noqa: E402

__all__ = [
    "E5OmniMTEBEncoder",
    "E5OmniRetrievalTask",
    "MTEB_METRIC_MAP",
    "compare_with_mteb",
    "e5omni_model_meta",
    "mteb_model",
    "retrieval_task",
    "subset_name",
]
