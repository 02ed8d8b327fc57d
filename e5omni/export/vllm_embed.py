"""Embed items with vLLM's offline `LLM.embed` on an `e5omni export --format vllm` folder.

Runs under the python of vLLM's own virtualenv (scripts/vllm_venv.sh), not the project's: it imports only vLLM,
transformers, numpy and PIL, and is run as a file:

    .vllm-venv/bin/python e5omni/export/vllm_embed.py JOB.json OUT.npy

JOB.json: {"model": EXPORT_DIR, "dtype": "float32", "items": [ITEM, ...]} where an ITEM has any of "prompt" (sent as a
system message: the export's chat template puts it before the text, as e5-omni does with its query prompt), "text",
"image" (a PNG path), "audio" (a .npy of float32 samples at 16 kHz), "video" (a .npy of uint8 frames (T, H, W, 3)).
Each item is rendered with the export's chat template (the one the server gets with --chat-template) and its media go
in `multi_modal_data`. Writes the (N, D) float32 vectors to OUT.npy and {"seconds": embed time, "items": N} to
OUT.npy.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _prompt(item: dict, tokenizer, template: str, fps: float):
    import numpy as np
    from PIL import Image

    parts, data = [], {}
    if item.get("image"):
        parts.append({"type": "image"})
        with Image.open(item["image"]) as image:
            data["image"] = image.convert("RGB")
    if item.get("audio"):
        parts.append({"type": "audio"})
        data["audio"] = (np.load(item["audio"]).astype(np.float32), 16000)
    if item.get("video"):
        parts.append({"type": "video"})
        frames = np.load(item["video"])
        # Qwen2-VL / Qwen2.5-VL need the frames' metadata (vLLM refuses bare frames): already sampled, at the model's fps
        metadata = {
            "total_num_frames": len(frames),
            "fps": fps,
            "duration": len(frames) / fps,
            "frames_indices": list(range(len(frames))),
            "do_sample_frames": False,
            "video_backend": "opencv",
        }
        data["video"] = (frames, metadata)
    if item.get("text") is not None:
        parts.append({"type": "text", "text": item["text"]})
    messages = []
    if item.get("prompt"):
        messages.append({"role": "system", "content": item["prompt"]})
    messages.append({"role": "user", "content": parts})
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    return {"prompt": text, "multi_modal_data": data} if data else {"prompt": text}


def main(job_path: str, out_path: str) -> None:
    import numpy as np
    from transformers import AutoTokenizer
    from vllm import LLM

    job = json.loads(Path(job_path).read_text())
    model = job["model"]
    export = json.loads((Path(model) / "e5omni_export.json").read_text())
    template = (Path(model) / export["chat_template"]).read_text()
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts = [_prompt(item, tokenizer, template, export["fps"]) for item in job["items"]]
    limits = {"image": 1, "video": 1}
    if export["backbone_type"] == "qwen2_5_omni_thinker":
        limits["audio"] = 1
    llm = LLM(
        model=model,
        runner="pooling",
        convert="embed",
        dtype=job.get("dtype", export["dtype"]),
        max_model_len=job.get("max_model_len", 4096),
        limit_mm_per_prompt=limits,
        mm_processor_kwargs=export["mm_processor_kwargs"],
        seed=0,
    )
    start = time.perf_counter()
    outputs = llm.embed(prompts, use_tqdm=False)
    seconds = time.perf_counter() - start
    vectors = np.asarray([out.outputs.embedding for out in outputs], dtype=np.float32)
    np.save(out_path, vectors)
    Path(out_path + ".json").write_text(json.dumps({"seconds": seconds, "items": len(prompts)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
