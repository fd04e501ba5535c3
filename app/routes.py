"""HTTP routes. Model objects come in through dependencies, from app.state (set up in main.lifespan)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.batcher import Batcher, Overloaded, Params
from app.metrics import Metrics
from app.schemas import Caption, CaptionResponse, Error, ModelInfo, Status, Tag
from app.settings import Settings
from runtime.captioner import Captioner
from runtime.images import ImageRejected, decode_image

STATIC = Path(__file__).parent / "static"
router = APIRouter()


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def require_ready(request: Request) -> None:
    """503 until the weights are loaded and warmed up (main.load_model sets the batcher last)."""
    if request.app.state.batcher is None:
        raise HTTPException(503, "the model is still loading", headers={"Retry-After": "1"})


def get_batcher(request: Request) -> Batcher:
    require_ready(request)
    return request.app.state.batcher


def get_captioner(request: Request) -> Captioner:
    require_ready(request)
    return request.app.state.captioner


async def one_image_field(request: Request) -> None:
    """422 for a form holding more than one field: FastAPI alone would caption the last of two images
    and ignore a misspelt field, so a client's mistake would pass unseen."""
    form = await request.form()  # parsed once: FastAPI reads the same cached form for `image`
    unknown = sorted(set(form.keys()) - {"image"})
    if unknown:
        raise HTTPException(422, f"unknown form field {', '.join(map(repr, unknown))}: the form takes one field, image")
    if len(images := form.getlist("image")) > 1:
        raise HTTPException(422, f"{len(images)} image fields: send one image per request")


ERRORS = {
    400: {"model": Error, "description": "corrupt or truncated image"},
    408: {"model": Error, "description": "the upload did not arrive within the body timeout"},
    413: {"model": Error, "description": "upload or image too large"},
    415: {"model": Error, "description": "not an image in a supported format"},
    422: {"model": Error, "description": "invalid parameters or form fields (errors lists each field that failed)"},
    503: {"model": Error, "description": "overloaded or still loading; retry after Retry-After seconds"},
    504: {"model": Error, "description": "the request took longer than the service's timeout"},
}


@router.post("/v1/captions", response_model=CaptionResponse, responses=ERRORS, tags=["captions"],
             dependencies=[Depends(one_image_field)])
async def create_captions(
    request: Request,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, GIF (first frame) or BMP")],
    batcher: Annotated[Batcher, Depends(get_batcher)],
    captioner: Annotated[Captioner, Depends(get_captioner)],
    settings: Annotated[Settings, Depends(get_settings)],
    beam_size: Annotated[int | None, Query(ge=1, le=10, description="beams searched (default: the model's, see /v1/model)")] = None,
    num_captions: Annotated[int, Query(ge=1, le=10, description="captions returned, at most beam_size")] = 1,
    max_length: Annotated[int | None, Query(ge=5, le=50, description="most words in a caption (default: the model's)")] = None,
    guided: Annotated[bool | None, Query(description="the caption says the photo's most confident tag; false: a plain "
                                                     "caption (default: the model's, see /v1/model: decoding.guided)")] = None,
) -> CaptionResponse:
    started = time.perf_counter()
    decoding = captioner.decoding.but(beam_size=beam_size, max_length=max_length, guided=guided)
    if num_captions > decoding.beam_size:
        raise HTTPException(422, f"num_captions ({num_captions}) must not exceed beam_size ({decoding.beam_size})")
    data = await image.read()
    try:
        pixels = await asyncio.get_running_loop().run_in_executor(
            request.app.state.decoders, decode_and_preprocess, data, settings.max_pixels, captioner)
    except ImageRejected as rejected:
        raise HTTPException(rejected.status_code, rejected.detail) from None
    try:
        result = await batcher.submit(pixels, Params(decoding, num_captions), settings.request_timeout_s)
    except Overloaded:
        raise HTTPException(503, "too many requests queued; retry shortly", headers={"Retry-After": "1"}) from None
    except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11 on
        raise HTTPException(504, f"no caption within {settings.request_timeout_s} s") from None
    request.state.batch_size = result.batch_size
    return caption_response(captioner, result.captions, result.confidences, result.tags,
                            elapsed_ms=round((time.perf_counter() - started) * 1000, 2))


def decode_and_preprocess(data: bytes, max_pixels: int, captioner: Captioner) -> np.ndarray:
    """An upload -> the pixels the CNN takes, [3, size, size]; ImageRejected for what is no image."""
    return captioner.preprocess(decode_image(data, max_pixels))


def caption_response(captioner: Captioner, captions: list[tuple[str, float]], confidences: list[float] | None,
                     tags: list, elapsed_ms: float) -> CaptionResponse:
    """The answer to a caption request: each caption with its confidence, when the weights are
    calibrated, and the photo's tags (runtime.tags.Tag)."""
    calibration = captioner.calibration
    confidences = confidences or [None] * len(captions)
    return CaptionResponse(
        captions=[Caption(text=text, log_prob=log_prob, confidence=confidence)
                  for (text, log_prob), confidence in zip(captions, confidences)],
        tags=[Tag(word=tag.word, class_name=tag.class_name, probability=tag.probability) for tag in tags],
        low_confidence=confidences[0] < calibration.threshold if calibration else None,
        model=captioner.model_id,
        elapsed_ms=elapsed_ms,
    )


@router.get("/healthz", response_model=Status, tags=["operations"])
async def healthz() -> Status:
    return Status(status="alive")


@router.get("/readyz", response_model=Status, responses={503: {"model": Error}}, tags=["operations"])
async def readyz(request: Request) -> Status:
    """200 once the weights are loaded and a warm-up caption has run; 503 again once a SIGTERM has
    come, while the service drains (captions are still answered)."""
    require_ready(request)
    if request.app.state.draining:
        raise HTTPException(503, "shutting down: send new requests to another replica")
    return Status(status="ready")


@router.get("/v1/model", response_model=ModelInfo, responses={503: {"model": Error}}, tags=["captions"])
async def model_info(captioner: Annotated[Captioner, Depends(get_captioner)]) -> ModelInfo:
    manifest = captioner.manifest
    return ModelInfo(
        model=captioner.model_id,
        encoder=manifest["encoder"],
        vocab_size=len(captioner.vocab),
        decoding=captioner.decoding.to_dict(),
        data=manifest.get("data", {}),
        training=manifest.get("training", {}),
        scores=manifest.get("scores", {}),
        files_sha256=manifest["files"],
        note=manifest.get("note"),
        confidence=manifest.get("confidence"),
        consensus=manifest.get("consensus"),
        tags={"available": True, **manifest["tags"]} if captioner.tagger else {"available": False, "reason": captioner.no_tags_reason},
    )


@router.get("/metrics", tags=["operations"], response_class=Response)
async def metrics(registry: Annotated[Metrics, Depends(get_metrics)]) -> Response:
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")
