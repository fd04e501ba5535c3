"""Uploaded bytes -> an RGB PIL image, or an error that says which 4xx it deserves."""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
DECODED_SIDE = 448  # the encoder squeezes every image to 224 x 224: larger decoded images only cost memory
TOO_LARGE = (Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageRejected(Exception):
    def __init__(self, status_code: int, detail: str):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def limit_pixels(max_pixels: int) -> None:
    """Make PIL's own decompression-bomb check use the service's limit, and fail rather than warn.

    Process-wide on purpose: warnings.catch_warnings per call is not thread-safe, and images are
    decoded on several threads at once."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open, check the declared size before decoding any pixels, decode, apply EXIF orientation.

    415: not an image of an accepted format; 413: more pixels than max_pixels; 400: corrupt."""
    too_large = f"image has more than {max_pixels} pixels"
    if not data:
        raise ImageRejected(400, "the uploaded file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(415, f"not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})") from None
    except TOO_LARGE:
        raise ImageRejected(413, too_large) from None
    except Exception as error:  # a header PIL recognises but cannot parse
        raise ImageRejected(400, f"corrupt or truncated image: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(413, f"image is {width}x{height}, {too_large}")
    if image.format == "JPEG":
        image.draft("RGB", (DECODED_SIDE, DECODED_SIDE))  # decoded at reduced scale, in the DCT
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # in place: no second full-size copy
        return _shrunk(_to_rgb(image))
    except TOO_LARGE:
        raise ImageRejected(413, too_large) from None
    except Exception as error:  # truncated data, bad CRC, broken EXIF: PIL raises many types
        raise ImageRejected(400, f"corrupt or truncated image: {error}") from None


def _shrunk(image: Image.Image) -> Image.Image:
    """What draft does for JPEG, for every format: an integer box-filter reduction that keeps the shorter
    side at least DECODED_SIDE. A 40-megapixel PNG would otherwise wait in the queue as 120 MB of RGB."""
    factor = min(image.size) // DECODED_SIDE
    return image.reduce(factor) if factor >= 2 else image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits first
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("P", "PA", "LA", "RGBA") and ("transparency" in image.info or "A" in image.mode):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")  # transparent areas as white paper
    return image.convert("RGB")
