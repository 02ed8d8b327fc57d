"""Images: decoding under the pixel cap and the format allow-list, arrays and tensors as images, and the resize the
Qwen processors apply (`resize_frame`, shared with video frames; `resize_image`).

Headers are checked before any pixel is decoded (an 86 KB PNG can declare 9400x9400); every refusal is an
`E5OmniInputError` subclass naming the item index. Part of `media_e5omni` (which re-exports everything here).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .configuration_e5omni import E5OmniConfig
from .inputs_e5omni import (
    _ARRAY,
    IMAGE_LAYOUTS,
    E5OmniInputError,
    MediaDecodeError,
    MediaShapeError,
    MediaTooLargeError,
    _is_numeric_array,
)
from .media_remote_e5omni import media_source


def _channel_axis(shape: tuple[int, ...], axes: tuple[int, int], channels: tuple[int, ...]) -> int | None:
    """The one axis of `axes` whose size is a channel count, or None when both or neither are (ambiguous)."""
    hits = [axis for axis in axes if shape[axis] in channels]
    return hits[0] if len(hits) == 1 else None


def _ambiguous_layout(kind: str, shape: tuple[int, ...], axes: tuple[int, int], channels, layouts: str, index):
    sizes = "/".join(map(str, channels))
    first, last = axes
    if all(shape[axis] in channels for axis in axes):
        reason = f"dims {first} and {last} both have size {sizes}"
    else:
        reason = f"neither dim {first} nor dim {last} has size {sizes}"
    return E5OmniInputError(
        f"cannot tell the channel axis of {kind} array of shape {shape}: {reason}; accepted layouts: {layouts}", index
    )


def image_from_array(value, index: int) -> Image.Image:
    """An image array or tensor -> the PIL image of its channels-last uint8 pixels (see the module docstring)."""
    shape = tuple(value.shape)
    if not _is_numeric_array(value) or value.ndim not in (2, 3):
        raise E5OmniInputError(
            f"image array must be {IMAGE_LAYOUTS}, got {type(value).__name__} of shape {shape}", index
        )
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    floating = value.is_floating_point() if isinstance(value, torch.Tensor) else value.dtype.kind == "f"
    if not floating and value.dtype != (torch.uint8 if isinstance(value, torch.Tensor) else np.uint8):
        raise E5OmniInputError(f"image array must be uint8 or float in [0, 1], got {value.dtype}", index)
    if value.ndim == 3:
        axis = _channel_axis(shape, (0, 2), (1, 3, 4))
        if axis is None:
            raise _ambiguous_layout("image", shape, (0, 2), (1, 3, 4), IMAGE_LAYOUTS, index)
        if axis == 0:
            value = value.permute(1, 2, 0) if isinstance(value, torch.Tensor) else value.transpose(1, 2, 0)
        if value.shape[2] == 1:
            value = value[:, :, 0]
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise MediaDecodeError(f"image has no pixels ({value.shape[1]}x{value.shape[0]})", index)
    if floating:  # torchvision's to_pil_image: scale by 255 and truncate, which only means something on [0, 1]
        low, high = float(value.min()), float(value.max())
        if not (0.0 <= low and high <= 1.0):  # also False for NaN
            raise E5OmniInputError(f"float image array must lie in [0, 1], got values in [{low}, {high}]", index)
        value = value.mul(255).byte() if isinstance(value, torch.Tensor) else (value * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(value.numpy() if isinstance(value, torch.Tensor) else value))


#: Image formats that are JPEG files underneath: a JPEG allow-list entry admits them (decoded as their first picture).
_JPEG_FAMILY = ("MPO",)


def _allowed_formats(config: E5OmniConfig) -> list[str]:
    allowed = [str(name).upper() for name in config.image_formats]
    if "JPEG" in allowed:
        allowed += [name for name in _JPEG_FAMILY if name not in allowed]
    return allowed


def _check_format(image: Image.Image, index: int, config: E5OmniConfig) -> None:
    """Refuse an image whose container format is outside the allow-list, before anything is decoded.

    In-memory images carry their format too: a lazily opened EPS/PS/PDF passed as a PIL image would run Ghostscript
    on `load()`, so its format (the instance's, or its plugin class's) is checked before any pixel is touched.
    Images built in memory (`Image.new`, `Image.fromarray`, ...) have no format and are taken as they are."""
    fmt = getattr(image, "format", None) or getattr(type(image), "format", None)
    if fmt is not None and str(fmt).upper() not in _allowed_formats(config):
        raise MediaDecodeError(
            f"image format {fmt} is not allowed; expected one of {list(config.image_formats)}", index
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels as the backbone processor and qwen-omni-utils see them.

    Transparency is composited on white (RGBA, LA, PA, La, RGBa, P/L/RGB with a transparency key), the way
    qwen-omni-utils' `to_rgb` does for RGBA (white background, alpha as paste mask); `convert("RGB")` would make
    transparent pixels black. 16-bit greyscale (I;16*, and I/F with 16-bit values) is scaled to 8 bits (x / 257,
    rounded): `convert("RGB")` clips it, turning almost every pixel white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 65535.0)
        if mode in ("I", "F") and values.max(initial=0.0) <= 255.0:
            grey = values  # already 8-bit values stored wide (e.g. Image.fromarray of int32 0..255)
        else:
            grey = values / 257.0
        return Image.fromarray(np.rint(grey).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.split()[3])
        return white
    return image.convert("RGB")


#: Largest ratio of an image's (or video frame's) long side to its short side: the Qwen processors' `smart_resize`
#: (and qwen-omni-utils') refuse anything beyond it with a bare ValueError, so it is checked here, from the header.
MAX_ASPECT_RATIO = 200


def check_aspect(width: int, height: int, index: int | None, what: str) -> None:
    if min(width, height) > 0 and max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise MediaShapeError(
            f"{what} of {width}x{height} has an aspect ratio of {max(width, height) / min(width, height):.0f}; the "
            f"backbone takes at most {MAX_ASPECT_RATIO}: crop or pad it",
            index,
        )


def load_image(value, index: int, config: E5OmniConfig) -> Image.Image:
    """Decode an image path (or take an in-memory image or array), refusing oversized headers before decoding.

    Paths, bytes and PIL images all pass the same format allow-list and `max_decode_pixels` cap before any pixel
    is decoded. Multi-frame files (GIF, TIFF, WEBP, MPO) give their first frame. EXIF orientation is NOT applied,
    like qwen-omni-utils (`Image.open` then `to_rgb`): a rotated-by-EXIF JPEG is embedded as stored."""
    if isinstance(value, Image.Image | _ARRAY):
        image = value if isinstance(value, Image.Image) else image_from_array(value, index)
        _check_format(image, index, config)
        width, height = image.size
        if width * height > config.max_decode_pixels:
            raise MediaTooLargeError(
                f"image of {width}x{height} pixels exceeds max_decode_pixels={config.max_decode_pixels}", index
            )
        check_aspect(width, height, index, "image")
        if getattr(image, "format", None) is not None:  # a lazily opened file: decode it under our error handling
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as err:
                raise MediaDecodeError(f"image is truncated or corrupt: {err}", index) from err
    else:
        source = media_source(value, index, "image", config)
        Image.init()
        plugins = [name for name in _allowed_formats(config) if name in Image.OPEN]
        try:  # only the allowed plugins may even look at the file
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=plugins)
        except Image.UnidentifiedImageError as err:
            try:  # name the format in the error when Pillow knows it
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as probe:
                    fmt = probe.format
            except Exception:
                fmt = None
            if fmt is not None:
                raise MediaDecodeError(
                    f"image format {fmt} is not allowed; expected one of {list(config.image_formats)}", index
                ) from err
            raise MediaDecodeError(f"cannot read image {value!s}: {err}", index) from err
        except (OSError, Image.DecompressionBombError) as err:  # unreadable header
            raise MediaDecodeError(f"cannot read image {value!s}: {err}", index) from err
        _check_format(image, index, config)
        width, height = image.size
        if width * height > config.max_decode_pixels:  # decided from the header alone: nothing decoded yet
            raise MediaTooLargeError(
                f"image {value!s} declares {width}x{height} pixels, more than max_decode_pixels="
                f"{config.max_decode_pixels}; refused before decoding",
                index,
            )
        check_aspect(width, height, index, f"image {value!s}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise MediaDecodeError(f"image {value!s} is truncated or corrupt: {err}", index) from err
    if image.width < 1 or image.height < 1:
        raise MediaDecodeError(f"image has no pixels ({image.width}x{image.height})", index)
    return _to_rgb(image)


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One uint8 (H, W, 3) frame -> (size[0], size[1], 3), with the resize the Qwen video processors apply
    (torchvision bicubic with antialias on the uint8 tensor, per image: the same values as resizing the stack)."""
    if frame.shape[:2] == tuple(size):
        return frame
    from torchvision.transforms.v2 import functional as tvF

    # (1, 3, H, W) viewed channels-last over the (H, W, 3) pixels: torch's uint8 antialiased kernel takes that
    # layout without a contiguous copy of the full-size frame
    image = torch.from_numpy(frame).unsqueeze(0).permute(0, 3, 1, 2)
    resized = tvF.resize(image, list(size), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    return np.ascontiguousarray(resized[0].permute(1, 2, 0).numpy())


def resize_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An RGB image resized to (height, width) = `size` with `resize_frame`'s op. Its pixels are copied strip by
    strip into one array (np.asarray of a whole PIL image holds two more copies: tobytes' chunks and their join)."""
    if (image.height, image.width) == tuple(size):
        return image
    pixels = np.empty((image.height, image.width, 3), np.uint8)
    for top in range(0, image.height, 256):
        pixels[top : top + 256] = np.asarray(image.crop((0, top, image.width, min(image.height, top + 256))))
    return Image.fromarray(resize_frame(pixels, size))
