"""Builds the app: `uvicorn app.main:app` serves it."""
from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from PIL import Image

from app.batcher import Batcher, Params
from app.metrics import Metrics
from app.middleware import AccessLog, BodySizeLimit
from app.routes import STATIC, router
from app.settings import Settings
from model import Captioner
from model.weights import WeightsError, verify

logger = logging.getLogger("captioner")


async def load_model(app: FastAPI) -> None:
    """Build the model off the event loop, warm it up, then report ready."""
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    try:
        captioner = await asyncio.to_thread(Captioner.load, settings.weights_dir, settings.device)
        batcher = Batcher(
            captioner, metrics, settings.max_batch_size, settings.max_batch_wait_ms / 1000, settings.queue_limit
        )
        await batcher.run([Image.new("RGB", (320, 240), "gray")], Params())
    except Exception as error:  # without a model the service is useless: say why and stop
        logger.critical("cannot load the model from %s: %s", settings.weights_dir, error)
        logging.shutdown()
        os._exit(1)
    batcher.start()
    app.state.batcher = batcher
    app.state.ready = True
    logger.info("ready: %s on %s", captioner.model_id, captioner.device)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    try:
        verify(settings.weights_dir)  # a tampered or missing file stops the start here, before any request
    except WeightsError as error:
        logger.critical("refusing to start: %s", error)
        raise
    loading = asyncio.create_task(load_model(app))
    yield
    loading.cancel()
    if app.state.batcher is not None:
        await app.state.batcher.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = FastAPI(
        title="captioner",
        version="0.1.0",
        summary="POST a photo, get a caption: EfficientNet-Lite0 features, an LSTM decoder, beam search.",
        lifespan=lifespan,
    )
    app.state.settings = settings or Settings()
    app.state.metrics = Metrics()
    app.state.batcher = None
    app.state.ready = False
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(BodySizeLimit, max_bytes=app.state.settings.max_upload_bytes)
    app.add_middleware(AccessLog, metrics=app.state.metrics)
    return app


app = create_app()
