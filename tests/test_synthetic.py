"""The bundled synthetic omni dataset: deterministic, honest splits, every pair, learnable signal, fast."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e5omni.data import content_hash, item_modalities, modality_signature, validate_example
from e5omni.data.synthetic import (
    COLOURS,
    DIRECTIONS,
    PAIRS,
    SHAPES,
    SyntheticOmniConfig,
    _Renderer,
    attribute_values,
    build_synthetic,
    is_test_scene,
    split_scenes,
    to_corpus,
)
from modeling_e5omni import E5OmniConfig
from modeling_e5omni.processing_e5omni import normalize_item

REPO = Path(__file__).resolve().parents[1]
_CAPTION = re.compile(
    r"(?P<colour>\w+) (?P<shape>\w+) (?:at the (?P<v>top|bottom)|on the (?P<h>left|right)|(?:moving|going) (?P<d>\w+))"
)
_PLACE_TO_DIRECTION = {"top": "up", "bottom": "down", "left": "left", "right": "right"}


def _fingerprint(examples) -> list:
    """Every item of every example as a content hash (bytes of images/arrays, text), plus the bookkeeping keys."""
    return [
        (
            content_hash(e["query"]),
            content_hash(e["positive"]),
            [content_hash(n) for n in e.get("negatives", [])],
            e["pair"],
            e["scene"],
        )
        for e in examples
    ]


def _caption_scene(text: str) -> tuple[str, str, str]:
    match = _CAPTION.search(text)
    assert match, text
    direction = match["d"] or _PLACE_TO_DIRECTION[match["v"] or match["h"]]
    return match["shape"], match["colour"], direction


def _scene_key(scene: dict) -> tuple[str, str, str]:
    return scene["shape"], scene["colour"], scene["direction"]


# ---------------------------------------------------------------------------------------------------------------------
# determinism and speed
# ---------------------------------------------------------------------------------------------------------------------


def test_build_is_fast_and_deterministic():
    start = time.perf_counter()
    first = build_synthetic("train", n=1000, seed=3)
    elapsed = time.perf_counter() - start
    assert len(first) == 1000
    assert elapsed < 5.0, f"1,000 examples took {elapsed:.2f} s"
    again = build_synthetic("train", n=1000, seed=3)
    assert _fingerprint(first) == _fingerprint(again)
    # byte-identical arrays, not just equal hashes
    for a, b in zip(first[:30], again[:30]):
        for x, y in ((a["query"], b["query"]), (a["positive"], b["positive"])):
            if isinstance(x, Image.Image):
                assert x.tobytes() == y.tobytes()
            elif isinstance(x, dict):
                for key in ("video", "audio"):
                    if key in x:
                        xa = x[key]["array"] if key == "audio" else x[key]
                        ya = y[key]["array"] if key == "audio" else y[key]
                        assert xa.tobytes() == ya.tobytes() and xa.dtype == ya.dtype
    other = build_synthetic("train", n=1000, seed=4)
    assert _fingerprint(other) != _fingerprint(first)


def test_build_is_deterministic_across_processes():
    code = (
        "from e5omni.data.synthetic import build_synthetic; from e5omni.data import content_hash;"
        "ex = build_synthetic('test', n=40, seed=7, difficulty=0.8);"
        "print([(content_hash(e['query']), content_hash(e['positive']), [content_hash(n) for n in e['negatives']]) for e in ex])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "999", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    here = build_synthetic("test", n=40, seed=7, difficulty=0.8)
    expected = [
        (content_hash(e["query"]), content_hash(e["positive"]), [content_hash(n) for n in e["negatives"]]) for e in here
    ]
    assert out.stdout.strip() == str(expected)


# ---------------------------------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_held_out_rule_keeps_every_value_pair_in_training(difficulty):
    train = {_scene_key(s) for s in split_scenes("train", difficulty)}
    test = {_scene_key(s) for s in split_scenes("test", difficulty)}
    values = attribute_values(difficulty)
    assert not train & test
    assert len(train) + len(test) == len(values["shape"]) * len(values["colour"]) * 4
    assert 0.12 < len(test) / (len(train) + len(test)) < 0.3
    # every pair of attribute values occurs in training: the test asks only for new combinations
    for a, b in itertools.combinations(range(3), 2):
        seen = {(s[a], s[b]) for s in train}
        names = [values["shape"], values["colour"], values["direction"]]
        assert seen == set(itertools.product(names[a], names[b]))


def test_test_scenes_are_nested_across_difficulties():
    easy = {_scene_key(s) for s in split_scenes("test", 0.0)}
    hard = {_scene_key(s) for s in split_scenes("test", 1.0)}
    assert easy < hard


@pytest.mark.parametrize("seeds", [(0, 0), (0, 1)])
def test_train_never_contains_test_media(seeds):
    train = build_synthetic("train", seed=seeds[0])
    test = build_synthetic("test", seed=seeds[1])
    test_scenes = {_scene_key(s) for s in split_scenes("test")}
    assert all(_scene_key(e["scene"]) not in test_scenes for e in train)
    assert all(_scene_key(e["scene"]) in test_scenes for e in test)
    # no test positive appears anywhere in training (query, positive or negative)
    train_items = {content_hash(i) for e in train for i in (e["query"], e["positive"], *e["negatives"])}
    assert not train_items & {content_hash(e["positive"]) for e in test}
    # hard negatives of training examples are training scenes too (checked on the captions of X->text pairs)
    for e in train:
        if e["pair"] in ("image->text", "audio->text", "video->text", "audio+video->text"):
            assert all(_caption_scene(n) not in test_scenes for n in e["negatives"])


# ---------------------------------------------------------------------------------------------------------------------
# content and shapes
# ---------------------------------------------------------------------------------------------------------------------


def test_all_pairs_present_and_balanced():
    examples = build_synthetic("test", n=len(PAIRS), seed=0)
    assert [e["pair"] for e in examples] == list(PAIRS)
    full = build_synthetic("test")  # n=None: every (scene, pair) once
    counts = Counter(e["pair"] for e in full)
    assert set(counts) == set(PAIRS) and len(set(counts.values())) == 1
    assert len(full) == len(split_scenes("test")) * len(PAIRS)
    subset = build_synthetic("train", n=10, pairs=["text->audio", "video->text"])
    assert Counter(e["pair"] for e in subset) == {"text->audio": 5, "video->text": 5}


def test_items_match_their_pair_and_the_model_api():
    config = E5OmniConfig()  # the omni backbone: every modality
    for e in build_synthetic("train", n=3 * len(PAIRS), seed=1):
        validate_example(e)  # the model's own item check (types and keys)
        for i, item in enumerate([e["query"], e["positive"], *e["negatives"]]):
            normalize_item(item, i, config)  # and its decoder (shapes, dtypes, sample rates), as in encode
        query_sig, doc_sig = e["pair"].split("->")
        assert modality_signature(e["query"]) == query_sig
        assert modality_signature(e["positive"]) == doc_sig
        assert all(modality_signature(n) == doc_sig for n in e["negatives"])
        assert isinstance(e["query"], dict) and e["query"]["instruction"]
        assert len(e["negatives"]) == 2


def test_media_shapes_and_dtypes():
    cfg = SyntheticOmniConfig(image_size=32, num_frames=3, audio_seconds=0.5, instructions=False)
    examples = build_synthetic("train", n=len(PAIRS), config=cfg, num_negatives=1)
    by_pair = {e["pair"]: e for e in examples}
    image = by_pair["text->image"]["positive"]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
    assert isinstance(by_pair["text->image"]["query"], str)  # no instruction -> a bare caption
    assert isinstance(by_pair["image->text"]["query"], Image.Image)
    video = by_pair["text->video"]["positive"]["video"]
    assert video.dtype == np.uint8 and video.shape == (3, 32, 32, 3)
    audio = by_pair["text->audio"]["positive"]["audio"]
    assert audio["sampling_rate"] == 16_000 and audio["array"].dtype == np.float32 and audio["array"].shape == (8_000,)
    assert np.all(np.abs(audio["array"]) <= 1.0)
    default = build_synthetic("train", n=len(PAIRS))
    clip = next(e for e in default if e["pair"] == "audio+video->text")["query"]
    assert clip["video"].shape == (4, 56, 56, 3) and clip["audio"]["array"].shape == (16_000,)
    assert item_modalities(clip) == (False, False, True, True)


def test_hard_negatives_differ_in_exactly_one_attribute():
    for e in build_synthetic("train", seed=2, num_negatives=3):
        if e["pair"] not in ("image->text", "audio->text", "video->text", "audio+video->text"):
            continue
        positive = _caption_scene(e["positive"])
        assert positive == _scene_key(e["scene"])
        negatives = [_caption_scene(n) for n in e["negatives"]]
        assert len(set(negatives)) == 3
        assert all(sum(a != b for a, b in zip(positive, n)) == 1 for n in negatives)


def test_composed_query_needs_both_text_and_image():
    renderer = _Renderer(SyntheticOmniConfig(difficulty=0.0), 0)
    for e in build_synthetic("train", difficulty=0.0, pairs=["text+image->video"]):
        shape, colour, direction = _scene_key(e["scene"])
        assert e["query"]["text"].endswith(f"moving {direction}")
        # the query image shows the same shape and colour resting in a *different* direction
        shown = np.asarray(e["query"]["image"])
        assert _image_direction(shown) != direction
        assert _image_colour(shown, renderer) == colour


# ---------------------------------------------------------------------------------------------------------------------
# learnable signal: a hand-written decoder reads the attributes back from the media
# ---------------------------------------------------------------------------------------------------------------------


def _image_colour(pixels: np.ndarray, renderer: _Renderer) -> str:
    mask = pixels.max(axis=-1) > 100
    mean = pixels[mask].reshape(-1, 3).mean(axis=0)
    return min(renderer.values["colour"], key=lambda c: np.linalg.norm(mean - np.array(COLOURS[c])))


def _centroid(pixels: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(pixels.max(axis=-1) > 100)
    return np.array([xs.mean(), ys.mean()]) - (np.array(pixels.shape[1::-1]) - 1) / 2


def _image_direction(pixels: np.ndarray) -> str:
    x, y = _centroid(pixels)
    return ("right" if x > 0 else "left") if abs(x) > abs(y) else ("down" if y > 0 else "up")


def _audio_pitch(array: np.ndarray, renderer: _Renderer) -> str:
    spectrum = np.abs(np.fft.rfft(array))
    peak = np.argmax(spectrum) * 16_000 / len(array)
    index = min(renderer.pitch, key=lambda i: abs(np.log2(renderer.pitch[i] / peak)))
    return renderer.values["colour"][index]


def _audio_beeps(array: np.ndarray) -> int:
    on = np.convolve(np.abs(array), np.ones(200) / 200, "same") > 0.04
    return int(np.sum(np.diff(on.astype(int)) == 1) + on[0])


@pytest.mark.parametrize("difficulty", [0.0, 0.5])
def test_attributes_are_decodable_from_the_media(difficulty):
    """The demo trains a tiny model for minutes: the signal must be plainly there (distinct colours, spaced pitches)."""
    renderer = _Renderer(SyntheticOmniConfig(difficulty=difficulty), 0)
    values = renderer.values
    for scene in itertools.product(range(len(values["shape"])), range(len(values["colour"])), range(4)):
        colour, direction = values["colour"][scene[1]], DIRECTIONS[scene[2]]
        image = np.asarray(renderer.image(scene))
        assert _image_colour(image, renderer) == colour and _image_direction(image) == direction
        video = renderer.video(scene)
        motion = _centroid(video[-1]) - _centroid(video[0])
        assert _image_direction(np.asarray(video[-1])) == direction and np.linalg.norm(motion) > 10
        audio = renderer.audio(scene)
        assert _audio_pitch(audio, renderer) == colour
        if difficulty == 0.0:
            assert _audio_beeps(audio) == scene[0] + 1
            sounding = np.abs(audio)[np.abs(audio) > 1e-3]  # no noise at difficulty 0
            quarter = len(sounding) // 4
            first, last = sounding[:quarter].max(), sounding[-quarter:].max()
            if direction in ("left", "right"):
                assert (first > 1.5 * last) == (direction == "left") and (last > 1.5 * first) == (direction == "right")


# ---------------------------------------------------------------------------------------------------------------------
# difficulty
# ---------------------------------------------------------------------------------------------------------------------


def test_difficulty_changes_values_spacing_noise_and_distractors():
    easy, hard = _Renderer(SyntheticOmniConfig(difficulty=0.0), 0), _Renderer(SyntheticOmniConfig(difficulty=1.0), 0)
    assert len(easy.values["shape"]) == 4 and len(hard.values["shape"]) == len(SHAPES) == 8
    assert len(split_scenes("test", 1.0)) > 3 * len(split_scenes("test", 0.0))

    def spacing(r: _Renderer) -> float:
        pitches = sorted(r.pitch.values())
        return min(np.log2(b / a) for a, b in zip(pitches, pitches[1:]))

    assert spacing(easy) == pytest.approx(0.5) and spacing(hard) == pytest.approx(0.25)
    scene = (0, 0, 0)
    assert np.asarray(easy.image(scene))[-8:, -8:].std() == 0  # clean black background
    assert np.asarray(hard.image(scene))[-8:, -8:].std() > 5
    quiet_gap = easy.audio((3, 0, 0))[int(0.15 * 16000) : int(0.2 * 16000)]
    noisy_gap = hard.audio((3, 0, 0))[int(0.15 * 16000) : int(0.2 * 16000)]
    assert np.abs(quiet_gap).max() < 1e-6 < np.abs(noisy_gap).std()

    def most_similar_share(difficulty: float) -> float:
        """How often a colour-changing negative takes the nearest colour (red -> orange/magenta, ...)."""
        hits = total = 0
        for e in build_synthetic("train", difficulty=difficulty, pairs=["image->text"], num_negatives=3):
            shape, colour, direction = _scene_key(e["scene"])
            for neg in e["negatives"]:
                n_shape, n_colour, _ = _caption_scene(neg)
                if n_colour != colour:
                    palette = attribute_values(difficulty)["colour"]
                    rgb = np.array(COLOURS[colour])
                    nearest = min((c for c in palette if c != colour), key=lambda c: np.linalg.norm(rgb - COLOURS[c]))
                    hits += n_colour == nearest
                    total += 1
        return hits / total

    assert most_similar_share(1.0) > most_similar_share(0.0) + 0.3


def test_config_validation():
    with pytest.raises(ValueError, match="difficulty"):
        build_synthetic(difficulty=1.5)
    with pytest.raises(ValueError, match="unknown or empty pairs"):
        build_synthetic(pairs=["image->audio"])
    with pytest.raises(ValueError, match="split"):
        build_synthetic("validation")
    with pytest.raises(ValueError, match="n must be"):
        build_synthetic(n=0)
    with pytest.raises(ValueError, match="num_negatives"):
        build_synthetic(num_negatives=-1)
    with pytest.raises(ValueError, match="sequence of pair names"):
        SyntheticOmniConfig(pairs="text->image")
    assert "negatives" not in build_synthetic(n=2, num_negatives=0)[0]
    assert is_test_scene(0, 0, 0) and not is_test_scene(1, 0, 0)


# ---------------------------------------------------------------------------------------------------------------------
# retrieval view
# ---------------------------------------------------------------------------------------------------------------------


def test_to_corpus_on_the_test_split():
    examples = build_synthetic("test")
    rc = to_corpus(examples)
    assert len(rc.queries) == len(examples)  # every (scene, pair) query is distinct
    assert set(rc.pairs) == set(PAIRS)
    for qid, relevant in rc.qrels.items():
        assert len(relevant) == 1
        (did,) = relevant
        assert did in rc.candidates[rc.query_pair[qid]]
    # the same scene rendered for the same pair is one document, whether positive or distractor
    for pair, pool in rc.candidates.items():
        assert len(pool) == len({content_hash(rc.corpus[d]) for d in pool})
        assert len(pool) > len([q for q in rc.query_pair.values() if q == pair])  # distractors beyond the positives
