"""Decoding images safely: any mode to RGB, size limits, bounded memory, clear errors.

Decoded images are at most ``MAX_SIDE`` pixels on their long side (features are computed
from 224-260 px inputs, thumbnails are 256 px): JPEGs are decoded at a reduced scale
(``draft``), other formats are shrunk with an area filter before any mode conversion, so
peak memory follows the output size, not the megapixels of the file.

The decoding rule for wide images (single-channel 16-bit, 32-bit integer and float, as
scientific and medical TIFFs and PNGs hold): their values are scaled to 8 bits by their
real range, never by the container's. Integers: by the smallest of 8, 10, 12, 14, 16,
24 or 32 bits that holds the image's largest value (12-bit data in a 16-bit PNG:
x 255/4095). Floats: values in [0, 1] x 255, in [0, 255] as they are, in [0, 65535]
x 255/65535. Negative values, NaN or infinity are refused with the reason (an
ImageError), never guessed at: convert such an image to 8 bits yourself."""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError, safe_text

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image

DEFAULT_MAX_PIXELS = 40_000_000
MAX_SIDE = 2048
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """At most ``max_side`` on the long side, area-averaged, in the image's own mode."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    if img.mode in ("P", "1", "PA"):  # palettes resize only by nearest neighbour
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "L")
    scale = max_side / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)


def _wide_to_grey(img: Image.Image, max_side: int, band_rows: int = 64) -> Image.Image:
    """16/32-bit single-channel image -> 8-bit "L" of at most ``max_side``, block-averaged
    band by band, so no full-size copy of the image is ever made (Pillow would widen a
    16-bit image to 32 bits to resize it), scaled by :func:`wide_range` (module docstring)."""
    w, h = img.size
    f = max(1, -(-max(w, h) // max_side))  # integer block size
    out_w, out_h = max(1, w // f), max(1, h // f)
    out = np.empty((out_h, out_w), np.float32)
    low, peak, finite = 0.0, 0.0, True
    for y0 in range(0, out_h, band_rows):
        y1 = min(out_h, y0 + band_rows)
        band = np.asarray(img.crop((0, y0 * f, out_w * f, y1 * f)))
        if img.mode == "F" and not np.isfinite(band).all():
            finite = False
            break
        low, peak = min(low, float(band.min())), max(peak, float(band.max()))
        out[y0:y1] = band.reshape(y1 - y0, f, out_w, f).mean(axis=(1, 3), dtype=np.float32)
    top = wide_range(img.mode, low, peak, finite)
    return Image.fromarray(np.clip(np.rint(out * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")


INT_DEPTHS = (8, 10, 12, 14, 16, 24, 32)


def wide_range(mode: str, low: float, peak: float, finite: bool = True) -> float:
    """The value that becomes white (255) in a wide image of ``mode`` whose values run from
    ``low`` to ``peak``, or ImageError when the range cannot be told (module docstring)."""
    kind = "float" if mode == "F" else "integer"
    if not finite:
        raise ImageError(f"a {kind} image with NaN or infinite values: convert it to 8 bits first", "corrupt")
    if low < 0:
        raise ImageError(f"a {kind} image with negative values (down to {low:g}): its range cannot be told; "
                         "convert it to 8 bits first", "corrupt")
    if mode == "F":
        for top in (1.0, 255.0, 65535.0):
            if peak <= top:
                return top
        raise ImageError(f"a float image with values up to {peak:g}, over 65535: its range cannot be told; "
                         "convert it to 8 bits first", "corrupt")
    bits = max(1, int(peak).bit_length())
    return float(2 ** next(d for d in INT_DEPTHS if d >= bits) - 1)


def _wide_grey_named(img: Image.Image, max_side: int, name: str) -> Image.Image:
    try:
        return _wide_to_grey(img, max_side)
    except ImageError as exc:
        raise ImageError(f"{name}: {exc}", exc.kind) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def open_image(source: str | Path | bytes | io.BytesIO, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_side: int = MAX_SIDE) -> Image.Image:
    """Decode a file path or bytes into an RGB PIL image of at most ``max_side`` pixels on
    its long side, or raise ImageError saying why."""
    name = safe_text(str(source)) if isinstance(source, (str, Path)) else "upload"
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageError("the file is empty (0 bytes)", "empty")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{name}: image is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the "
                        f"{max_pixels / 1e6:.0f}-megapixel limit; downscale it first",
                        "too_large",
                    )
                if w == 0 or h == 0:
                    raise ImageError(f"{name}: image has no pixels", "empty")
                if img.format == "JPEG":
                    img.draft(img.mode, (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale
                img.load()
                img = _wide_grey_named(img, max_side, name) if img.mode in _WIDE_MODES else _shrink(img, max_side)
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found", "missing") from None
    except UnidentifiedImageError:
        if _looks_like_image(source):
            raise ImageError(f"{name}: corrupt image (the header is an image's, the data is not)", "corrupt") from None
        raise ImageError(f"{name}: not an image this server can read (JPEG, PNG, BMP, WebP, ...)", "not_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a decompression bomb ({exc})", "too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def _looks_like_image(source) -> bool:
    try:
        if isinstance(source, io.BytesIO):
            head = source.getvalue()[:12]
        else:
            with open(source, "rb") as fh:
                head = fh.read(12)
    except OSError:
        return False
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def image_from_array(array: np.ndarray) -> Image.Image:
    """An (h, w) or (h, w, 1|3|4) array as an RGB image: uint8 as it is; any other dtype scaled
    by the decoding rule of files (:func:`wide_range`: floats in [0, 1], [0, 255] or
    [0, 65535], integers by the fewest bits that hold their largest value), rounded;
    negative, NaN or infinite values refused (:class:`ImageError`)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or min(a.shape[:2]) == 0:
        raise ImageError(f"an image array must be (h, w) or (h, w, 3|4), got shape {a.shape}", "not_image")
    if a.dtype != np.uint8:
        if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
            raise ImageError(f"an image array must hold numbers, got {a.dtype}", "not_image")
        finite = bool(np.isfinite(a).all())
        white = wide_range("F" if np.issubdtype(a.dtype, np.floating) else "I", float(a.min()) if finite else 0.0,
                           float(a.max()) if finite else 0.0, finite)
        a = np.rint(np.clip(a.astype(np.float64) * (255.0 / white), 0, 255)).astype(np.uint8)
    return _to_rgb(Image.fromarray(a))


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """Bilinear resize to size x size, as uint8 (size, size, 3)."""
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def load_resized(source, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    img = open_image(source, max_pixels=max_pixels)
    return resize_rgb(img, size)


def thumbnail_jpeg(path: str | Path, size: int = 256, square: bool = True, quality: int = 85) -> bytes:
    """A JPEG thumbnail: centre-cropped to ``size`` x ``size`` (result grids line up), or
    with its aspect ratio kept within ``size`` (``square=False``)."""
    img = open_image(path)
    if square:
        img = ImageOps.fit(img, (size, size))
    else:
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def thumbnail_data_url(path: str | Path, size: int = 64, quality: int = 70) -> str:
    """A small square thumbnail as a ``data:`` URL, for chart tooltips (about 2 KB at 64 px)."""
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(path, size, quality=quality)).decode("ascii")
