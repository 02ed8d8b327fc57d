"""The parallel input pipeline: `encode(..., num_workers=2)` against the serial path, side by side in one run.

    python benchmarks/encode_pipeline.py [--per-kind 12] [--batch-size 8] [--workers 2] [--repeats 3]

A mixed corpus of media FILES written here at the sizes real collections have, embedded at the model card's media
budgets (E5OmniConfig defaults: images <= 1280 x 28 x 28 pixels, video frames likewise, 2 fps up to 32 frames,
audio up to 30 s, the video's audio track included) from files of the sizes phones and cameras write: 12 MP JPEG
photos (4032 x 3024), 30 s stereo 44.1 kHz WAVs, 10 s 1920 x 1080 MP4 clips at 30 fps with an AAC track, and
captions. The budgets cap what the forward sees; decoding cost grows with the files. The model is the tiny seeded Qwen2.5-Omni thinker
(`e5omni.tiny`), so the forward is cheap and decoding + processing dominate, as they do for a GPU forward.

Reported: serial wall time, `num_workers` wall time, their ratio (goal >= 1.6x on 2 cores), and the bound the
machine allows: serial / max(forward, decode / min(workers, cores), total CPU work / cores) (the last term only when
the forward runs on the CPU), with the decode + process time and the forward time each measured alone.
`--device cuda` runs the forward on a GPU. Vectors must be identical (torch.equal). Medians over `--repeats` runs,
the two paths interleaved. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_corpus(root: Path, per_kind: int) -> list:
    import av
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    items: list = []
    for i in range(per_kind):
        # a photo-like JPEG: smooth gradients + noise (compresses like a photo, decodes like one)
        y, x = np.mgrid[0:3024, 0:4032]
        base = np.stack([(x * (i + 1)) % 256, (y * 2 + i * 17) % 256, (x + y) % 256], -1).astype(np.float32)
        photo = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(root / f"photo{i}.jpg", quality=90)
        t = np.arange(30 * 44100) / 44100
        tone = 0.3 * np.sin(2 * np.pi * (200 + 30 * i) * t)
        sf.write(root / f"sound{i}.wav", np.stack([tone, 0.5 * tone], 1).astype(np.float32), 44100)
        with av.open(str(root / f"clip{i}.mp4"), "w") as container:
            video = container.add_stream("mpeg4", rate=30)
            video.width, video.height, video.pix_fmt = 1920, 1080, "yuv420p"
            video.options = {"g": "30"}  # a keyframe a second, as cameras write
            audio = container.add_stream("aac", rate=44100, layout="mono")
            for f in range(10 * 30):
                frame = np.zeros((1080, 1920, 3), np.uint8)
                frame[:] = ((f * 3 + i * 40) % 256, 128, (255 - f * 3) % 256)
                frame[(f * 7) % 1000 : (f * 7) % 1000 + 80, :] = 255
                for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
            samples = (0.3 * np.sin(2 * np.pi * 330 * np.arange(10 * 44100) / 44100)).astype(np.float32)
            for start in range(0, samples.shape[0], 1024):
                frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 44100, start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
        items += [
            f"a caption about scene number {i}, with a few more words to read",
            {"image": str(root / f"photo{i}.jpg")},
            {"audio": str(root / f"sound{i}.wav")},
            {"video": str(root / f"clip{i}.mp4")},
        ]
    return items


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=8, help="items of each kind (text, image, audio, video)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--budgets",
        choices=("card", "small"),
        default="card",
        help="card: the model card's media budgets (on CPU the forward then dominates); small: the tiny model's "
        "own budgets (a cheap forward, standing in for a GPU's, so decoding dominates as it does there)",
    )
    parser.add_argument("--device", default="cpu", help="where the forward runs (cpu, cuda)")
    args = parser.parse_args(argv)

    import torch

    from e5omni.tiny import build_tiny_model
    from modeling_e5omni import E5OmniConfig
    from modeling_e5omni.modeling_e5omni import _estimated_length
    from modeling_e5omni.processing_e5omni import prepared_batches

    torch.set_num_threads(1)
    model, processor = build_tiny_model("qwen2.5-omni", seed=0)
    if args.budgets == "card":
        budgets = E5OmniConfig(backbone_config=model.config.backbone_config.to_dict())  # the card's defaults
        for name in ("max_pixels", "min_pixels", "video_max_pixels", "video_min_pixels", "max_frames", "fps"):
            setattr(model.config, name, getattr(budgets, name))
        model.config.max_audio_seconds = budgets.max_audio_seconds
    model.set_processor(processor)
    model.eval().to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        items = write_corpus(Path(tmp), args.per_kind)
        encode = model.encode_document
        encode(items[:8], batch_size=args.batch_size, num_workers=0, show_progress_bar=False)  # warm-up
        serial_t, parallel_t, prep_t, forward_t = [], [], [], []
        reference = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            serial = encode(items, batch_size=args.batch_size, num_workers=0, show_progress_bar=False)
            serial_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            parallel = encode(items, batch_size=args.batch_size, num_workers=args.workers, show_progress_bar=False)
            parallel_t.append(time.perf_counter() - start)
            reference = serial if reference is None else reference
            if not (torch.equal(serial, parallel) and torch.allclose(serial, reference, atol=1e-6)):
                raise SystemExit("the parallel path changed the vectors")
            # the two stages alone, on encode's own batches: decode + process, then the forward on their tensors
            order = sorted(range(len(items)), key=lambda i: -_estimated_length(items[i]))
            batches = [order[b : b + args.batch_size] for b in range(0, len(items), args.batch_size)]
            start = time.perf_counter()
            prepared = list(prepared_batches(processor, items, batches, "document", 0))
            prep_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.inference_mode():
                for batch in prepared:
                    model(**{k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            sync()
            forward_t.append(time.perf_counter() - start)

    serial_s, parallel_s = statistics.median(serial_t), statistics.median(parallel_t)
    prep_s, forward_s = statistics.median(prep_t), statistics.median(forward_t)
    # the best the machine allows: decoding spread over min(workers, cores) processes, the forward alongside; on
    # the CPU both share the cores (total CPU work / cores), on a GPU the forward does not take a core
    ideal = max(forward_s, prep_s / min(args.workers, cores))
    if not args.device.startswith("cuda"):
        ideal = max(ideal, (prep_s + forward_s) / cores)
    bound = serial_s / ideal
    result = {
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "budgets": args.budgets,
        "items": len(items),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cores": cores,
        "serial_s": round(serial_s, 2),
        "parallel_s": round(parallel_s, 2),
        "speedup": round(serial_s / parallel_s, 2),
        "decode_process_s": round(prep_s, 2),
        "forward_s": round(forward_s, 2),
        "bound": round(bound, 2),
        "fraction_of_bound": round((serial_s / parallel_s) / bound, 2),
        "identical_vectors": True,
    }
    print(
        f"{len(items)} items ({args.per_kind} each of text, 12 MP JPEG, 30 s WAV, 10 s 1080p MP4 with sound), "
        f"{args.budgets} budgets"
    )
    print(f"serial {serial_s:.2f} s | num_workers={args.workers} {parallel_s:.2f} s | speed-up {result['speedup']}x")
    print(f"decode + process alone {prep_s:.2f} s, forward alone {forward_s:.2f} s, {cores} cores: bound {bound:.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
