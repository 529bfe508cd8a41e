"""Images both pipelines share: decoding with limits, encoding, and composing previews.
Pure numpy/Pillow."""

from __future__ import annotations

import io
import warnings
from typing import Sequence, Union

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # Pillow's names of the formats above

# Pillow only warns below 2x its own limit (~179 MP); a tile job knows the size it expects.
DEFAULT_MAX_PIXELS = 4096 * 4096


class BadImage(ValueError):
    """An image (or pair) that cannot be used; the message is the reason recorded for it."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 RGB. Grayscale, palette, RGBA and 16-bit become RGB.

    Only DECODED_FORMATS are opened (Pillow knows dozens, EPS among them, which it hands to
    Ghostscript). The declared size is checked from the header before any pixel is decoded.
    EXIF orientation is not applied: a tile's pixels sit where its key's grid cell says,
    whatever a camera recorded.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(f"declared size {width}x{height} exceeds the {max_pixels}-pixel limit")
            image.load()
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise BadImage(f"cannot decode image: {error}") from None
    return to_rgb_array(image)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)  # no copy to convert


def encode_image(image: np.ndarray, image_format: str = "png", quality: int = 90, png_level: int = 6) -> bytes:
    """HxWx3 uint8 -> encoded bytes (png, jpeg or webp)."""
    buffer = io.BytesIO()
    pil_format = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}[image_format.lower()]
    options = {"quality": quality} if pil_format in ("JPEG", "WEBP") else {"compress_level": png_level}
    Image.fromarray(image).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


ImageLike = Union[Image.Image, np.ndarray]


def to_pil(image: ImageLike) -> Image.Image:
    """PIL image (converted to RGB) or HxWx3 uint8 array -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got shape {array.shape} dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def side_by_side(*images: ImageLike, gap: int = 0, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Images left to right, top-aligned, `gap` pixels apart; height is the tallest image's."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    pils = [to_pil(img) for img in images]
    width = sum(img.width for img in pils) + gap * (len(pils) - 1)
    canvas = Image.new("RGB", (width, max(img.height for img in pils)), tuple(background))
    left = 0
    for img in pils:
        canvas.paste(img, (left, 0))
        left += img.width + gap
    return canvas


def image_grid(
    rows: Sequence[Sequence[ImageLike]], gap: int = 0, background: tuple[int, int, int] = (0, 0, 0)
) -> Image.Image:
    """Rows of `side_by_side` images stacked top to bottom, `gap` pixels apart in both directions."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    strips = [side_by_side(*row, gap=gap, background=background) for row in rows]
    height = sum(s.height for s in strips) + gap * (len(strips) - 1)
    canvas = Image.new("RGB", (max(s.width for s in strips), height), tuple(background))
    top = 0
    for strip in strips:
        canvas.paste(strip, (0, top))
        top += strip.height + gap
    return canvas
