"""A bundled, generated omni retrieval dataset: shapes you can see, hear and watch move.

Why it exists: the demo and the tests must train and evaluate an omni embedding model with no downloads, in minutes
on a CPU, and show that training helps. So every example is rendered from a tiny latent *scene* of three attributes,
and every modality renders the same scene:

- **shape** (circle, square, triangle, cross, diamond, ring, hexagon, star),
- **colour** (red, blue, yellow, green, magenta, cyan, orange, purple),
- **direction** (up, down, left, right).

| modality | how the scene is rendered |
| --- | --- |
| image (56x56 RGB) | the coloured shape on black, displaced from the centre towards the direction ("at the top") |
| video (4 frames, uint8 (T, H, W, 3)) | the shape moving through the centre towards the direction; the last frame is the image |
| audio (1 s, 16 kHz mono float32) | colour -> pitch (ordered by hue), shape -> number of beeps (circle 1, square 2, ...), direction -> contour (up: rising glide, down: falling glide, left: fading, right: swelling) |
| text | a caption: "a red circle at the top", "a red circle moving up", "the sound of a red circle going up" |

Pairs (query -> document), all present in both splits, balanced round-robin:
text->image, text->audio, text->video, image->text, audio->text, video->text, and the mixed text+image->video (the
image gives shape and colour, the text gives the motion: composed retrieval), audio->text+image (a document with an
image and its caption) and audio+video->text (a clip with its soundtrack).

Held-out split (what makes the test honest): a scene (shape, colour, direction) is a *test scene* iff
``(i_shape + 2 i_colour + 3 i_direction) % 5 == 0`` (indices into the full value lists), about 1 in 5 scenes. Train
examples never contain a test scene in any role (query, positive or hard negative), so no test image, sound, video or
caption is ever seen in training. Every single attribute value, and every *pair* of values (e.g. "red circle", "red
... moving up"), does occur in training: the test asks for new *combinations* of known attributes (compositional
generalisation), not for unseen words or colours, which no model could guess. Test distractors may be train scenes:
that leaks nothing about the test answers. The rule uses fixed indices, so it is independent of ``seed`` and the test
scenes at a lower difficulty are a subset of those at a higher one.

Rendering is a pure function of (seed, difficulty, scene, modality): the same scene gives byte-identical media
everywhere in one build, so ``content_hash`` identifies duplicates exactly (the collator masks them as negatives,
``to_corpus`` merges them). Examples may share arrays and images: copy before mutating.

``difficulty`` in [0, 1] turns several knobs at once: values per attribute (shape and colour: 4 at 0, 6 at 0.5,
8 at 1), pitch spacing between colours (1/2 octave at 0 down to 1/4 octave at 1, so glides start to overlap),
pixel and audio noise (none at 0), position jitter, and how often a hard negative takes the *most similar* value of
the changed attribute (nearest colour in RGB, most overlapping shape) instead of a random one.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from e5omni.data import RetrievalCorpus, to_corpus

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "PAIRS",
    "SHAPES",
    "RetrievalCorpus",
    "SyntheticOmniConfig",
    "attribute_values",
    "build_synthetic",
    "is_test_scene",
    "split_scenes",
    "to_corpus",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "ring", "hexagon", "star")
"""Most distinct first: low difficulty uses a prefix of this list."""
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 80, 235),
    "yellow": (235, 215, 40),
    "green": (40, 185, 60),
    "magenta": (220, 50, 210),
    "cyan": (40, 210, 220),
    "orange": (245, 140, 30),
    "purple": (130, 60, 200),
}
"""Most distinct first; orange and purple (added at high difficulty) sit between existing hues."""
DIRECTIONS: tuple[str, ...] = ("up", "down", "left", "right")
_DIRECTION_VECTORS = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
_PLACES = {"up": "at the top", "down": "at the bottom", "left": "on the left", "right": "on the right"}

PAIRS: tuple[str, ...] = (
    "text->image",
    "text->audio",
    "text->video",
    "image->text",
    "audio->text",
    "video->text",
    "text+image->video",
    "audio->text+image",
    "audio+video->text",
)
_INSTRUCTIONS = {
    "text->image": "Find the image that matches the caption.",
    "text->audio": "Find the sound that matches the caption.",
    "text->video": "Find the video that matches the caption.",
    "image->text": "Find the caption that describes the image.",
    "audio->text": "Find the caption that describes the sound.",
    "video->text": "Find the caption that describes the video.",
    "text+image->video": "Find the video of the shape in the image moving as the text says.",
    "audio->text+image": "Find the captioned picture that matches the sound.",
    "audio+video->text": "Find the caption that describes the clip.",
}

HOLDOUT_MODULUS = 5
"""About 1/HOLDOUT_MODULUS of the scenes are test scenes; see the module docstring."""
BASE_PITCH_HZ = 220.0
GLIDE_OCTAVES = 0.3
"""Total pitch glide of an up/down sound; smaller than twice the colour spacing, so pitch stays decodable."""
_SPLITS = ("train", "test")

Scene = tuple[int, int, int]  # indices into SHAPES, COLOURS, DIRECTIONS


@dataclass(frozen=True)
class SyntheticOmniConfig:
    """Everything that defines a synthetic build besides ``split``, ``n`` and ``seed``.

    Media sizes default to the tiny model's budgets (56x56 images, 4-frame videos, 1 s of 16 kHz audio) so that a CPU
    demo encodes thousands of items in seconds. ``instructions`` puts a task instruction on every query (as MMEB-style
    training data does); turn it off to get bare strings and images as queries.
    """

    difficulty: float = 0.5
    num_negatives: int = 2
    pairs: tuple[str, ...] = PAIRS
    instructions: bool = True
    image_size: int = 56
    num_frames: int = 4
    audio_seconds: float = 1.0
    sampling_rate: int = 16_000

    def __post_init__(self) -> None:
        if isinstance(self.pairs, str):
            raise ValueError(f"pairs must be a sequence of pair names, got the string {self.pairs!r}")
        object.__setattr__(self, "pairs", tuple(self.pairs))
        if not 0.0 <= float(self.difficulty) <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty!r}")
        unknown = [p for p in self.pairs if p not in PAIRS]
        if unknown or not self.pairs:
            raise ValueError(
                f"unknown or empty pairs {unknown or list(self.pairs)}; expected a subset of {list(PAIRS)}"
            )
        if len(set(self.pairs)) != len(self.pairs):
            raise ValueError(f"pairs contains duplicates: {list(self.pairs)}")
        if not isinstance(self.num_negatives, int) or self.num_negatives < 0:
            raise ValueError(f"num_negatives must be an int >= 0, got {self.num_negatives!r}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not self.audio_seconds > 0 or self.sampling_rate < 1000:
            raise ValueError(
                f"need audio_seconds > 0 and sampling_rate >= 1000, got {self.audio_seconds}, {self.sampling_rate}"
            )


# ---------------------------------------------------------------------------------------------------------------------
# The scene space and the held-out rule
# ---------------------------------------------------------------------------------------------------------------------


def _num_values(difficulty: float) -> int:
    return 4 + int(round(4 * difficulty))


def attribute_values(difficulty: float = 0.5) -> dict[str, tuple[str, ...]]:
    """The active values of each attribute at a difficulty (prefixes of SHAPES / COLOURS; all four directions)."""
    k = _num_values(difficulty)
    return {"shape": SHAPES[:k], "colour": tuple(COLOURS)[:k], "direction": DIRECTIONS}


def is_test_scene(shape: int, colour: int, direction: int) -> bool:
    """The held-out rule on attribute indices: a fixed Latin-square-like pattern, not a random draw.

    For any two attributes held fixed, at most one in HOLDOUT_MODULUS values of the third is held out, so every pair
    of attribute values keeps training scenes (checked in tests).
    """
    return (shape + 2 * colour + 3 * direction) % HOLDOUT_MODULUS == 0


def split_scenes(split: str, difficulty: float = 0.5) -> list[dict[str, str]]:
    """The scenes of a split as attribute dicts (for inspection and the docs)."""
    values = attribute_values(difficulty)
    return [_scene_dict(scene, values) for scene in _scenes(split, difficulty)]


def _scenes(split: str, difficulty: float) -> list[Scene]:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    k = _num_values(difficulty)
    every = itertools.product(range(k), range(k), range(len(DIRECTIONS)))
    return [scene for scene in every if is_test_scene(*scene) == (split == "test")]


def _scene_dict(scene: Scene, values: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {"shape": values["shape"][scene[0]], "colour": values["colour"][scene[1]], "direction": DIRECTIONS[scene[2]]}


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, ...]) -> None:
    """Draw one shape of radius ``r`` centred at (cx, cy); all shapes have about the same extent."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(round(r * 0.4))))
    elif shape == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "cross":
        w = r * 0.33
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles, radii = [-90, 30, 150], [r] * 3
    elif shape == "diamond":
        angles, radii = [-90, 0, 90, 180], [r] * 4
    elif shape == "hexagon":
        angles, radii = list(range(0, 360, 60)), [r] * 6
    elif shape == "star":
        angles, radii = list(range(-90, 270, 36)), [r if i % 2 == 0 else r * 0.45 for i in range(10)]
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")
    return [(cx + rr * np.cos(np.radians(a)), cy + rr * np.sin(np.radians(a))) for a, rr in zip(angles, radii)]


@functools.cache
def _shape_mask(shape: str, size: int = 64) -> np.ndarray:
    img = Image.new("L", (size, size))
    _draw_shape(ImageDraw.Draw(img), shape, size / 2, size / 2, size * 0.4, (255,))
    return np.asarray(img) > 0


@functools.cache
def _most_similar(attribute: str, k: int) -> tuple[int, ...]:
    """For each active value, the index of the most similar other value (hard-negative material).

    Shapes: highest mask IoU (circle~hexagon, square~diamond); colours: nearest in RGB. Directions have no such order.
    """
    if attribute == "shape":
        masks = [_shape_mask(s) for s in SHAPES[:k]]

        def score(i: int, j: int) -> float:
            return float((masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum())
    else:
        rgb = [np.array(c, dtype=float) for c in list(COLOURS.values())[:k]]

        def score(i: int, j: int) -> float:
            return -float(np.linalg.norm(rgb[i] - rgb[j]))

    return tuple(max((j for j in range(k) if j != i), key=lambda j: score(i, j)) for i in range(k))


class _Renderer:
    """Renders the media of a scene once per build and hands out the cached result (same scene -> same bytes)."""

    def __init__(self, config: SyntheticOmniConfig, seed: int):
        self.cfg = config
        self.seed = seed
        d = float(config.difficulty)
        self.values = attribute_values(d)
        k = len(self.values["colour"])
        # colours ordered by hue get ascending pitches, so perceptually near colours are also near in pitch
        hue = {
            i: colorsys.rgb_to_hsv(*(v / 255 for v in COLOURS[name]))[0] for i, name in enumerate(self.values["colour"])
        }
        step = 0.5 - 0.25 * d  # octaves between neighbouring colours
        self.pitch = {i: BASE_PITCH_HZ * 2 ** (rank * step) for rank, i in enumerate(sorted(range(k), key=hue.get))}
        self.pixel_noise = 0.1 * 255 * d
        self.audio_noise = 0.08 * d
        self.jitter = 0.06 * config.image_size * d
        self._cache: dict[tuple[str, Scene], Any] = {}
        self._difficulty_key = int(round(d * 1000))

    def _rng(self, scene: Scene, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self._difficulty_key, *scene, stream])

    def _cached(self, kind: str, scene: Scene, make):
        key = (kind, scene)
        if key not in self._cache:
            self._cache[key] = make(scene)
        return self._cache[key]

    # -- captions ---------------------------------------------------------------------------------------------------
    def caption(self, kind: str, scene: Scene) -> str:
        s = self.values["shape"][scene[0]]
        c = self.values["colour"][scene[1]]
        d = DIRECTIONS[scene[2]]
        if kind == "image":
            return f"a {c} {s} {_PLACES[d]}"
        if kind == "video":
            return f"a {c} {s} moving {d}"
        if kind == "audio":
            return f"the sound of a {c} {s} going {d}"
        if kind == "clip":
            return f"a {c} {s} moving {d}, with its sound"
        raise AssertionError(kind)

    # -- visual -----------------------------------------------------------------------------------------------------
    def _centre(self, scene: Scene, progress: float) -> tuple[float, float]:
        """Shape centre at ``progress`` in [-1, 1] along the direction (1 = the image's resting place)."""
        size = self.cfg.image_size
        jx, jy = self._rng(scene, 0).uniform(-self.jitter, self.jitter, size=2) if self.jitter else (0.0, 0.0)
        vx, vy = _DIRECTION_VECTORS[DIRECTIONS[scene[2]]]
        return size / 2 + vx * 0.25 * size * progress + jx, size / 2 + vy * 0.25 * size * progress + jy

    def _frame(self, scene: Scene, progress: float) -> np.ndarray:
        size = self.cfg.image_size
        img = Image.new("RGB", (size, size))
        cx, cy = self._centre(scene, progress)
        colour = COLOURS[self.values["colour"][scene[1]]]
        _draw_shape(ImageDraw.Draw(img), self.values["shape"][scene[0]], cx, cy, 0.16 * size, colour)
        return np.asarray(img)

    def _noisy(self, frames: np.ndarray, scene: Scene, stream: int) -> np.ndarray:
        if not self.pixel_noise:
            return np.ascontiguousarray(frames, dtype=np.uint8)
        noise = self._rng(scene, stream).normal(0.0, self.pixel_noise, size=frames.shape)
        return np.clip(frames.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    def image(self, scene: Scene) -> Image.Image:
        return self._cached("image", scene, lambda sc: Image.fromarray(self._noisy(self._frame(sc, 1.0), sc, 1)))

    def video(self, scene: Scene) -> np.ndarray:
        def make(sc: Scene) -> np.ndarray:
            t = self.cfg.num_frames
            progress = np.linspace(-1.0, 1.0, t) if t > 1 else np.array([1.0])
            return self._noisy(np.stack([self._frame(sc, float(p)) for p in progress]), sc, 2)

        return self._cached("video", scene, make)

    # -- audio ------------------------------------------------------------------------------------------------------
    def audio(self, scene: Scene) -> np.ndarray:
        return self._cached("audio", scene, self._make_audio)

    def _make_audio(self, scene: Scene) -> np.ndarray:
        """Beeps at the colour's pitch; their count is the shape's index + 1; the direction shapes the contour."""
        sr = self.cfg.sampling_rate
        n = int(round(self.cfg.audio_seconds * sr))
        direction = DIRECTIONS[scene[2]]
        position = np.arange(n, dtype=np.float64) / max(n - 1, 1)  # 0..1 over the clip
        glide = {"up": GLIDE_OCTAVES, "down": -GLIDE_OCTAVES}.get(direction, 0.0)
        freq = self.pitch[scene[1]] * 2.0 ** (glide * (position - 0.5))
        tone = np.sin(2 * np.pi * np.cumsum(freq) / sr)
        beeps = scene[0] + 1
        slot = n / beeps
        on = 0.6 * slot
        ramp = max(1.0, 0.005 * sr)  # 5 ms fades: no clicks, which would smear energy over all frequencies
        where = np.mod(np.arange(n, dtype=np.float64), slot)
        gate = np.clip(np.minimum(where, on - where) / ramp, 0.0, 1.0)
        envelope = {"left": 1.0 - 0.75 * position, "right": 0.25 + 0.75 * position}.get(direction, 1.0)
        signal = 0.5 * gate * envelope * tone
        if self.audio_noise:
            signal = signal + self._rng(scene, 3).normal(0.0, self.audio_noise, size=n)
        return signal.astype(np.float32)

    # -- items ------------------------------------------------------------------------------------------------------
    def audio_value(self, scene: Scene) -> dict[str, Any]:
        return {"array": self.audio(scene), "sampling_rate": self.cfg.sampling_rate}

    def document(self, pair: str, scene: Scene) -> Any:
        source, target = pair.split("->")
        if target == "image":
            return self.image(scene)
        if target == "audio":
            return {"audio": self.audio_value(scene)}
        if target == "video":
            return {"video": self.video(scene)}
        if target == "text+image":
            return {"text": self.caption("image", scene), "image": self.image(scene)}
        kind = {"image": "image", "audio": "audio", "video": "video", "audio+video": "clip"}[source]
        return self.caption(kind, scene)

    def query(self, pair: str, scene: Scene, shown_direction: int) -> Any:
        source, target = pair.split("->")
        if source == "text":
            item: Any = self.caption(target, scene)
        elif source == "image":
            item = self.image(scene)
        elif source == "audio":
            item = {"audio": self.audio_value(scene)}
        elif source == "video":
            item = {"video": self.video(scene)}
        elif source == "audio+video":
            item = {"audio": self.audio_value(scene), "video": self.video(scene)}
        elif source == "text+image":
            shown = (scene[0], scene[1], shown_direction)
            item = {"text": f"the same shape moving {DIRECTIONS[scene[2]]}", "image": self.image(shown)}
        else:  # pragma: no cover - PAIRS is closed
            raise AssertionError(pair)
        if not self.cfg.instructions:
            return item
        if isinstance(item, str):
            item = {"text": item}
        elif isinstance(item, Image.Image):
            item = {"image": item}
        return {**item, "instruction": _INSTRUCTIONS[pair]}


# ---------------------------------------------------------------------------------------------------------------------
# Building examples
# ---------------------------------------------------------------------------------------------------------------------


def _hard_negatives(
    scene: Scene, k: int, allowed: set[Scene], rng: np.random.Generator, difficulty: float, n_values: int
):
    """k distinct scenes that differ from ``scene`` in one attribute, cycling over the attributes.

    With probability ``difficulty`` the changed attribute takes its most similar value (if allowed). Falls back to
    scenes differing in more attributes only when the one-attribute neighbours run out (large k).
    """
    chosen: list[Scene] = []
    order = [int(a) for a in rng.permutation(3)]
    neighbours = {
        a: [s for s in allowed if s != scene and all(s[b] == scene[b] for b in range(3) if b != a)] for a in range(3)
    }
    for j in range(k):
        attribute = order[j % 3]
        pool = [s for s in neighbours[attribute] if s not in chosen]
        if not pool:
            pool = [s for a in range(3) for s in neighbours[a] if s not in chosen]
        if not pool:
            pool = sorted(s for s in allowed if s != scene and s not in chosen)
        if not pool:
            raise ValueError(f"num_negatives={k} is more than the {len(chosen)} distinct distractors available")
        pool.sort()
        if attribute < 2 and rng.random() < difficulty:
            similar = list(scene)
            similar[attribute] = _most_similar(("shape", "colour")[attribute], n_values)[scene[attribute]]
            if tuple(similar) in pool:
                pool = [tuple(similar)]  # type: ignore[list-item]
        chosen.append(pool[int(rng.integers(len(pool)))])
    return chosen


def build_synthetic(
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    *,
    difficulty: float | None = None,
    pairs: Sequence[str] | None = None,
    num_negatives: int | None = None,
    instructions: bool | None = None,
    config: SyntheticOmniConfig | None = None,
) -> list[dict[str, Any]]:
    """Generate ``n`` examples of one split, deterministically for ``seed``.

    Returns training examples ``{"query", "positive", "negatives" (if num_negatives > 0), "pair", "scene"}``;
    ``"pair"`` names the modality pair (e.g. ``"text->image"``) for per-pair evaluation, ``"scene"`` the positive's
    attributes. Pairs are interleaved round-robin, so any ``n >= len(pairs)`` contains every pair in near-equal
    numbers. ``n=None`` gives every (scene, pair) combination of the split exactly once (the natural size of an
    evaluation set); a larger ``n`` cycles through fresh shuffles. Keyword arguments override ``config``.
    """
    cfg = config or SyntheticOmniConfig()
    overrides = {"difficulty": difficulty, "pairs": pairs, "num_negatives": num_negatives, "instructions": instructions}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    d = float(cfg.difficulty)
    scenes = _scenes(split, d)
    n_values = _num_values(d)
    # Train distractors are train scenes only (no test media leaks into training); test distractors may be any scene.
    allowed = set(scenes) if split == "train" else set(itertools.product(range(n_values), range(n_values), range(4)))
    renderer = _Renderer(cfg, seed)
    rng = np.random.default_rng([seed, _SPLITS.index(split), 0x5E5])
    total = n if n is not None else len(scenes) * len(cfg.pairs)

    plan: list[tuple[Scene, str]] = []
    while len(plan) < total:
        orders = {pair: [scenes[i] for i in rng.permutation(len(scenes))] for pair in cfg.pairs}
        plan.extend((orders[pair][i], pair) for i in range(len(scenes)) for pair in cfg.pairs)
    plan = plan[:total]

    examples = []
    for scene, pair in plan:
        shown_direction = scene[2]
        if pair == "text+image->video":  # the image must show another direction, so the text is needed
            options = [d_ for d_ in range(4) if d_ != scene[2] and (scene[0], scene[1], d_) in allowed]
            shown_direction = options[int(rng.integers(len(options)))]
        example: dict[str, Any] = {
            "query": renderer.query(pair, scene, shown_direction),
            "positive": renderer.document(pair, scene),
        }
        if cfg.num_negatives:
            negatives = _hard_negatives(scene, cfg.num_negatives, allowed, rng, d, n_values)
            example["negatives"] = [renderer.document(pair, s) for s in negatives]
        example["pair"] = pair
        example["scene"] = _scene_dict(scene, renderer.values)
        examples.append(example)
    return examples
