"""A small demo corpus for the page and the Space: the bundled synthetic scenes written as real files.

`write_demo_corpus(folder, n=24)` renders `n` held-out scenes of `e5omni.data.synthetic` (coloured shapes you can
see, hear and watch move) as `images/*.png`, `sounds/*.wav`, `clips/*.mp4` and `captions/*.txt`: a folder that
`e5omni index` embeds like any other. Deterministic for `seed`; no download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEMO_PAIRS = ("text->image", "text->audio", "text->video", "image->text")


def _write_mp4(path: Path, frames: np.ndarray, fps: int = 4) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_demo_corpus(folder: str | os.PathLike, n: int = 24, seed: int = 0) -> list[Path]:
    """Write the demo corpus into `folder` (created; must not hold files already). Returns the files written."""
    import soundfile as sf

    from e5omni.data.synthetic import build_synthetic

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; the demo corpus is written into a fresh folder")
    examples = build_synthetic("test", n=n, seed=seed, pairs=DEMO_PAIRS, num_negatives=0, instructions=False)
    written: list[Path] = []
    for number, example in enumerate(examples):
        scene = example["scene"]
        stem = f"{number:03d}-{scene['colour']}-{scene['shape']}-{scene['direction']}"
        document = example["positive"]
        if example["pair"] == "text->image":
            path = folder / "images" / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            document.save(path)
        elif example["pair"] == "text->audio":
            path = folder / "sounds" / f"{stem}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            audio = document["audio"]
            sf.write(path, np.asarray(audio["array"], dtype=np.float32), int(audio["sampling_rate"]))
        elif example["pair"] == "text->video":
            path = folder / "clips" / f"{stem}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_mp4(path, np.asarray(document["video"], dtype=np.uint8))
        else:
            path = folder / "captions" / f"{stem}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(document, encoding="utf-8")
        written.append(path)
    return written
