"""Fuzzing the real server over HTTP: the API from its own OpenAPI schema, and the image decoder.

Both sizes come from the environment, small enough for CI by default:
    CAPTIONER_FUZZ_EXAMPLES=600 CAPTIONER_IMAGE_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py -s
CAPTIONER_FUZZ_EXAMPLES is per generation mode (schema-valid and schema-invalid requests).
"""
from __future__ import annotations

import os
import struct
import zlib
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import encoded, scene

API_EXAMPLES = int(os.environ.get("CAPTIONER_FUZZ_EXAMPLES", "40"))
IMAGE_EXAMPLES = int(os.environ.get("CAPTIONER_IMAGE_FUZZ_EXAMPLES", "150"))
TIMEOUT_S = 30  # per request: a decoder that hangs fails the test instead of stalling it
FUZZ_SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
# Small on purpose: every mutant that still decodes is captioned, and that is most of the time spent.
# RGBA for WebP, so that it is written with a VP8X header, which holds the canvas size.
VALID = {fmt: encoded(scene((96, 72)).convert("RGBA" if fmt == "WEBP" else "RGB"), fmt) for fmt in FORMATS}
MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF89a", "WEBP": b"RIFF\0\0\0\0WEBP", "BMP": b"BM"}

# The upload field is a string with contentMediaType application/octet-stream in FastAPI's schema,
# for which schemathesis draws text. This format makes it draw bytes instead: real images of every
# accepted format now and then (so captioning is fuzzed too, not only the rejections), else any bytes.
schemathesis.openapi.format("captioner-upload", st.one_of(st.sampled_from(list(VALID.values())), st.binary()))


def upload_fields_as_bytes(schema: dict) -> None:
    for component in schema.get("components", {}).get("schemas", {}).values():
        for field in component.get("properties", {}).values():
            if field.get("contentMediaType") == "application/octet-stream":
                field["format"] = "captioner-upload"


@pytest.fixture(scope="module")
def api_schema(server):
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    upload_fields_as_bytes(schema.raw_schema)
    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
def test_every_route_answers_by_its_schema(api_schema, mode):
    """No 5xx, and every status, header and body as the schema declares it; schema-invalid input gets a 4xx.

    positive_data_acceptance is left out: the schema allows any bytes as the image, and the
    service rightly refuses bytes that are no image (400, 415), or num_captions over beam_size (422)."""
    answers = Counter()

    @given(case=api_schema.as_strategy(mode))
    @settings(max_examples=API_EXAMPLES, **FUZZ_SETTINGS)
    def fuzz(case):
        response = case.call_and_validate(timeout=TIMEOUT_S, excluded_checks=[positive_data_acceptance])
        answers[f"{case.method} {case.path} {response.status_code}"] += 1

    fuzz()
    print(f"\n{mode.value}: {answers.total()} cases: {dict(sorted(answers.items()))}")
    routes = {answer.rsplit(" ", 1)[0] for answer in answers}
    if mode is GenerationMode.POSITIVE:
        assert routes == {f"{method.upper()} {path}" for path, methods in api_schema.raw_schema["paths"].items()
                          for method in methods}
        assert answers["POST /v1/captions 200"] > 0  # real images reached the model
    else:  # only the upload route has parameters and a body to get wrong
        assert routes == {"POST /v1/captions"}


# Mutated and hand-made images through the upload route.


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def declaring_size(fmt: str, width: int, height: int) -> bytes:
    """A valid image of `fmt` whose header claims width x height; the pixel data stays that of 96x72."""
    data = bytearray(VALID[fmt])
    if fmt == "PNG":  # IHDR, with its CRC redone so that only the size is wrong
        return bytes(data[:8] + png_chunk(b"IHDR", struct.pack(">II", width, height) + data[24:29]) + data[33:])
    if fmt == "GIF":  # the logical screen
        data[6:10] = struct.pack("<HH", width, height)
    elif fmt == "BMP":  # BITMAPINFOHEADER
        data[18:26] = struct.pack("<ii", width, height)
    elif fmt == "JPEG":  # the start-of-frame segment
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    else:
        return webp_canvas(bytes(data), width, height)
    return bytes(data)


def webp_canvas(data: bytes, width: int, height: int) -> bytes:
    """A WebP with a VP8X header (alpha or animation) claiming a canvas of width x height."""
    return data[:24] + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little") + data[30:]


MAX_DECLARED = {"PNG": 2**31 - 1, "GIF": 2**16 - 1, "BMP": 2**31 - 1, "JPEG": 2**16 - 1, "WEBP": 2**24}
formats = st.sampled_from(FORMATS)


@st.composite
def truncated(draw) -> bytes:
    data = VALID[draw(formats)]
    return data[:draw(st.integers(0, len(data) - 1))]


@st.composite
def bits_flipped(draw) -> bytes:
    data = bytearray(VALID[draw(formats)])
    for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
        data[position] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def wrong_magic(draw) -> bytes:
    """One format's bytes behind another format's (or random) magic number."""
    data = VALID[draw(formats)]
    magic = draw(st.one_of(st.sampled_from(list(MAGIC.values())), st.binary(min_size=1, max_size=12)))
    return magic + data[len(magic):]


@st.composite
def huge_declared(draw) -> bytes:
    fmt = draw(formats)
    size = st.integers(1, MAX_DECLARED[fmt])
    return declaring_size(fmt, draw(size), draw(size))


def assert_clean_answer(response: httpx.Response) -> None:
    """200 with captions, or a 4xx with a JSON detail: never a 5xx, never an HTML or empty error."""
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    body = response.json()
    if response.status_code == 200:
        assert body["captions"]
    else:
        assert isinstance(body["detail"], str) and body["detail"]


def post_image(url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/captions", files={"image": ("upload", data)}, timeout=TIMEOUT_S)


def test_mutated_images_get_a_caption_or_a_clean_4xx(served):
    statuses = Counter()

    @given(data=st.one_of(truncated(), bits_flipped(), wrong_magic(), huge_declared(), st.binary(max_size=2048)))
    @settings(max_examples=IMAGE_EXAMPLES, **FUZZ_SETTINGS)
    def fuzz(data):
        response = post_image(served.url, data)
        assert_clean_answer(response)
        statuses[response.status_code] += 1

    fuzz()
    print(f"\n{statuses.total()} mutated images: {dict(sorted(statuses.items()))}")
    assert httpx.get(f"{served.url}/healthz", timeout=5).json() == {"status": "alive"}
    assert post_image(served.url, VALID["JPEG"]).status_code == 200
    assert served.process.poll() is None and "Traceback" not in served.output()


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def sixteen_bit_png() -> bytes:
    image = Image.new("I;16", (96, 72))
    image.putdata([(x * 700 + y * 40) % 65536 for y in range(72) for x in range(96)])
    return encoded(image, "PNG")


def palette_png_with_transparency() -> bytes:
    image = scene((96, 72)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encoded(image, "PNG", transparency=0)


def animated(fmt: str) -> bytes:
    frames = [scene((96, 72), colour) for colour in ("red", "blue", "green")]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


SPECIAL_IMAGES = {
    "16-bit greyscale PNG": (sixteen_bit_png, 200),
    "CMYK JPEG": (lambda: encoded(scene((96, 72)).convert("CMYK"), "JPEG"), 200),
    "palette PNG with transparency": (palette_png_with_transparency, 200),
    "LA PNG": (lambda: encoded(scene((96, 72)).convert("LA"), "PNG"), 200),
    "RGBA PNG": (lambda: encoded(scene((96, 72)).convert("RGBA"), "PNG"), 200),
    "RGBA WebP": (lambda: VALID["WEBP"], 200),
    "bilevel PNG": (lambda: encoded(scene((96, 72)).convert("1"), "PNG"), 200),
    "animated PNG": (lambda: animated("PNG"), 200),
    "animated WebP": (lambda: animated("WEBP"), 200),
    **{f"EXIF orientation {value} in {fmt}": (lambda value=value, fmt=fmt: encoded(scene((96, 72)), fmt,
                                                                                    exif=exif_orientation(value)), 200)
       for value in (0, 9, 65535) for fmt in ("JPEG", "PNG", "WEBP")},
    "EXIF block of junk": (lambda: encoded(scene((96, 72)), "JPEG", exif=b"Exif\0\0" + b"\xff" * 40), 200),
    **{f"1x1 {fmt}": (lambda fmt=fmt: encoded(Image.new("RGB", (1, 1), "white"), fmt), 200)
       for fmt in ("JPEG", "GIF", "WEBP", "BMP")},  # PNG: test_service.py
    **{f"{fmt} declaring 20000x20000": (lambda fmt=fmt: declaring_size(fmt, 20_000, 20_000), 413)
       for fmt in ("GIF", "BMP", "JPEG")},
    # A still WebP's canvas must match its frame, so libwebp calls this one corrupt; animations may be larger.
    "still WebP declaring 16384x16384": (lambda: declaring_size("WEBP", 16_384, 16_384), 400),
    "animated WebP declaring 16384x16384": (lambda: webp_canvas(animated("WEBP"), 16_384, 16_384), 413),
    "GIF declaring 65535x65535": (lambda: declaring_size("GIF", 65_535, 65_535), 413),
    "BMP declaring 2^31-1 squared": (lambda: declaring_size("BMP", 2**31 - 1, 2**31 - 1), 413),
    "PNG declaring 0x0": (lambda: declaring_size("PNG", 0, 0), 415),
    "BMP declaring 0x0": (lambda: declaring_size("BMP", 0, 0), 415),
    "JPEG declaring 0x0": (lambda: declaring_size("JPEG", 0, 0), 415),
}


@pytest.mark.parametrize("make, status", SPECIAL_IMAGES.values(), ids=SPECIAL_IMAGES.keys())
def test_unusual_images(server, make, status):
    response = post_image(server, make())
    assert response.status_code == status, response.text
    assert_clean_answer(response)
