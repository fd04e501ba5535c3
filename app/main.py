"""Builds the app: `uvicorn app.main:app` serves it."""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import NoReturn

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError

from app import errors
from app.batcher import Batcher
from app.metrics import Metrics
from app.middleware import AccessLog, BodySizeLimit, BodyTimeout
from app.routes import STATIC, router
from app.settings import Settings
from runtime.captioner import Captioner
from runtime.images import limit_pixels
from runtime.weights import WeightsError, require_export, verify

logger = logging.getLogger("captioner")


def exit_with(message: str) -> NoReturn:
    """One clear line and a non-zero status: a captioning service without its model has nothing to serve.

    os._exit rather than an exception: uvicorn would print a traceback around the message."""
    logger.critical(message)
    logging.shutdown()
    os._exit(1)


async def load_model(app: FastAPI, batcher: Batcher) -> None:
    """Load the model and warm it up off the event loop, then report ready (readyz stays 503 until then)."""
    settings: Settings = app.state.settings
    try:
        captioner = await batcher.start(lambda: Captioner.load(settings.weights_dir, settings.device, settings.decoder_precision,
                                                                 settings.encoder_runtime))
    except Exception as error:
        exit_with(f"refusing to start: cannot load the model from {settings.weights_dir}: {error}")
    app.state.captioner = captioner
    app.state.batcher = batcher  # set last: its presence is what readyz reports (routes.require_ready)
    logger.info("ready: %s on %s, CNN through %s, decoder matmuls in %s", captioner.model_id, captioner.device,
                captioner.runtime, captioner.precision)


@asynccontextmanager
async def lifespan(app: FastAPI):
    try:
        # a tampered or missing file, or a folder never exported for the runtime, stops the start before the port opens
        require_export(app.state.settings.weights_dir, verify(app.state.settings.weights_dir))
    except WeightsError as error:
        exit_with(f"refusing to start: {error}")
    settings: Settings = app.state.settings
    batcher = Batcher(app.state.metrics, settings.max_batch_size, settings.max_batch_wait_ms / 1000, settings.queue_limit)
    # Photos decode on their own few threads, a few at a time: a 40-megapixel one briefly takes a
    # few hundred MB. A thread keeps the freed memory of the largest photos it decoded (glibc gives
    # each its own heap): on the server's shared pool of up to 40 threads, that had grown by 15-23
    # MiB each, +100 MiB in 1,500 requests.
    app.state.decoders = ThreadPoolExecutor(settings.decode_concurrency, thread_name_prefix="decode")
    # Loading the CNN takes seconds: the server answers healthz (and readyz with 503) meanwhile.
    loading = asyncio.create_task(load_model(app, batcher))
    yield
    loading.cancel()
    app.state.decoders.shutdown(cancel_futures=True)
    await batcher.stop()  # also when the stop comes while the model loads: its thread must end before the process


def create_app(settings: Settings | None = None) -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # One line per request, the JSON one of middleware.AccessLog, however uvicorn was started:
    # its own access line would repeat it in another format.
    logging.getLogger("uvicorn.access").disabled = True
    try:
        settings = settings or Settings()
    except ValidationError as error:  # at import, before uvicorn logs anything: say which variable and exit
        raise SystemExit(f"refusing to start: invalid CAPTIONER_* environment variable: {error}") from None
    limit_pixels(settings.max_pixels)
    app = FastAPIOffline(  # /docs and /redoc from files packaged with fastapi-offline: they work offline
        title="captioner",
        version="0.1.0",
        summary="POST a photo, get a caption: EfficientNet-Lite0 features, an LSTM decoder, beam search.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.captioner = None
    app.state.batcher = None
    app.state.draining = False  # set on SIGTERM by python -m app (app.__main__)
    app.include_router(router)
    errors.install(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # Browsers ask for /favicon.ico where a page links no icon (a JSON answer, /metrics): the page's icon, not a 404.
    app.add_route("/favicon.ico", lambda _: FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml"),
                  include_in_schema=False)

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyTimeout, timeout_s=settings.body_timeout_s)
    app.add_middleware(AccessLog, metrics=app.state.metrics)
    return app


app = create_app()
