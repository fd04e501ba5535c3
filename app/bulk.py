"""Many photos at once, in this process or through a running service: one Captioned per photo, in order.

    from app.bulk import InProcess
    captioner = InProcess.load()  # the weights, decoding and batching the service uses (CAPTIONER_* settings)
    for photo in captioner.caption(["a.jpg", "b.png", PIL.Image.open("c.webp")]):  # 16 to a batch
        answer = photo.response  # app.schemas.CaptionResponse, as POST /v1/captions answers; None on error
        print(photo.source, photo.error or f"{answer.captions[0].text} {[tag.word for tag in answer.tags]}")

InProcess is the service without HTTP: each photo is read and decoded as an upload is
(app.routes.decode_and_preprocess), by decode_concurrency threads beside the model and a batch
ahead of it; the model runs the service's inference step (app.batcher.infer) on up to
max_batch_size photos at a time; the answer is the service's own (app.routes.caption_response).
Remote sends each photo to a running service's POST /v1/captions, `concurrency` at a time, and reads
its answer into the same CaptionResponse. Either way a photo that cannot be captioned becomes a
Captioned with the error, and the others go on. `captioner caption` (app.cli) writes what either gives.
"""
from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, Union

import httpx
import numpy as np
from PIL import Image

from app.batcher import Params, infer, prepare
from app.metrics import Metrics
from app.routes import caption_response, decode_and_preprocess
from app.schemas import CaptionResponse
from app.settings import Settings
from runtime.captioner import Captioner
from runtime.images import ImageRejected
from runtime.options import Decoding
from runtime.weights import verify

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
Photo = Union[str, os.PathLike, Image.Image]  # a path is read as an upload is; an image is taken as it is
RETRIED = {408, 429, 500, 502, 503, 504}  # the service (or a proxy before it) is busy or restarting: try again
T, R = TypeVar("T"), TypeVar("R")


@dataclass(frozen=True)
class Captioned:
    source: Photo  # as it was given
    response: CaptionResponse | None  # what POST /v1/captions answers; None when the photo could not be captioned
    error: str | None = None  # why not, in one sentence


class InProcess:
    def __init__(self, captioner: Captioner, settings: Settings):
        """captioner: loaded and prepared (app.batcher.prepare). Use InProcess.load."""
        self.captioner = captioner
        self.batch_size = settings.max_batch_size
        self.decode_threads = settings.decode_concurrency
        self.max_pixels = settings.max_pixels
        self.metrics = Metrics()  # batch sizes and stage times, as the service's /metrics counts them

    @classmethod
    def load(cls, weights: str | os.PathLike | None = None, settings: Settings | None = None) -> InProcess:
        """The model as the service loads it: weights (unless given, $CAPTIONER_WEIGHTS_DIR, else the
        shipped weights/, wherever this is run from) checked against their manifest, loaded on this
        thread, which will run them, and warmed up. Raises WeightsError, or what loading raised,
        where they cannot be loaded."""
        settings = settings or Settings()
        weights = Path(weights or (settings.weights_dir if "weights_dir" in settings.model_fields_set else SHIPPED_WEIGHTS))
        verify(weights)
        captioner = Captioner.load(weights, settings.device, settings.decoder_precision, settings.encoder_runtime)
        return cls(prepare(captioner), settings)

    def caption(self, photos: Iterable[Photo], decoding: Decoding | None = None, num_captions: int = 1) -> Iterator[Captioned]:
        """Per photo, in order, what POST /v1/captions would answer (decoding: the weights' own, as
        the service's, unless given) or why it cannot be captioned. Lazy: photos are read as the
        answers are taken, so an iterable of a million paths is fine."""
        params = Params(decoding or self.captioner.decoding, num_captions)
        with ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode") as pool:
            for batch in batched(ahead(pool, self._pixels, photos, self.batch_size), self.batch_size):
                yield from self._caption_batch(batch, params)

    def _pixels(self, photo: Photo) -> tuple[np.ndarray, float]:
        """On a decode thread: the photo as the CNN takes it, and when its decoding started."""
        started = time.perf_counter()
        if isinstance(photo, Image.Image):
            return self.captioner.preprocess(photo), started
        return decode_and_preprocess(Path(photo).read_bytes(), self.max_pixels, self.captioner), started

    def _caption_batch(self, batch: list[tuple[Photo, Future]], params: Params) -> Iterator[Captioned]:
        decoded, errors = {}, {}
        for i, (_, future) in enumerate(batch):
            try:
                decoded[i] = future.result()
            except ImageRejected as rejected:
                errors[i] = rejected.detail
            except OSError as error:
                errors[i] = f"cannot read it: {error.strerror or error}"
        results = infer(self.captioner, [pixels for pixels, _ in decoded.values()], [params] * len(decoded),
                        self.metrics) if decoded else []
        answered = time.perf_counter()
        responses = {i: caption_response(self.captioner, result.captions, result.confidences, result.tags,
                                         elapsed_ms=round((answered - started) * 1000, 2))
                     for (i, (_, started)), result in zip(decoded.items(), results)}
        for i, (photo, _) in enumerate(batch):
            yield Captioned(photo, responses.get(i), errors.get(i))


class ServiceUnavailable(Exception):
    """The service cannot be reached, or is not ready."""


class Remote:
    def __init__(self, url: str, concurrency: int = 8, timeout_s: float = 120, retries: int = 5):
        """url: where the service answers (http://host:port). Each photo is sent up to 1 + retries
        times while the service answers busy (503 with Retry-After, 504...) or not at all."""
        self.url = url.rstrip("/")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.retries = retries

    def wait_ready(self, wait_s: float = 60) -> None:
        """Return once /readyz answers 200 (a service still loading its model gets wait_s);
        ServiceUnavailable where it cannot be reached at all, or is still not ready."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                status = httpx.get(f"{self.url}/readyz", timeout=10).status_code
            except httpx.HTTPError as error:
                raise ServiceUnavailable(f"cannot reach {self.url}: {error}") from None
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"{self.url}/readyz still answers {status} after {wait_s:.0f} s")
            time.sleep(1)

    def caption(self, photos: Iterable[str | os.PathLike]) -> Iterator[Captioned]:
        """Per photo (a path), in order, the service's answer or why there is none."""
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        with httpx.Client(timeout=self.timeout_s, limits=limits) as http, \
                ThreadPoolExecutor(self.concurrency, thread_name_prefix="post") as pool:
            # Twice as many under way as there are threads: a slow answer at the head holds none of them idle
            for _, future in ahead(pool, lambda photo: self._post(http, photo), photos, 2 * self.concurrency):
                yield future.result()

    def _post(self, http: httpx.Client, photo: str | os.PathLike) -> Captioned:
        try:
            data = Path(photo).read_bytes()
        except OSError as error:
            return Captioned(photo, None, f"cannot read it: {error.strerror or error}")
        for attempt in range(self.retries + 1):
            try:
                response = http.post(f"{self.url}/v1/captions", files={"image": (Path(photo).name, data)})
            except httpx.TransportError as error:
                problem, wait_s = f"no answer from {self.url}: {error}", 2.0 ** attempt
            else:
                if response.status_code == 200:
                    return Captioned(photo, CaptionResponse.model_validate_json(response.content))
                problem = _detail(response)
                if response.status_code not in RETRIED:
                    return Captioned(photo, None, problem)
                wait_s = float(response.headers.get("Retry-After", 2.0 ** attempt))
            if attempt < self.retries:
                time.sleep(min(wait_s, 30))
        return Captioned(photo, None, f"{problem} ({self.retries + 1} tries)")


def _detail(response: httpx.Response) -> str:
    """The service's one-sentence error, or what a proxy before it said."""
    try:
        return response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def ahead(pool: ThreadPoolExecutor, work: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[tuple[T, Future]]:
    """(item, the future of work(item) on pool), in order, with work started on up to `window` items
    beyond the one yielded: the pool keeps busy while the caller uses the results, and a long
    iterable is not all read (nor its results held) at once."""
    pending: deque[tuple[T, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(work, item)))
        if len(pending) > window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of `size` items, the last one shorter (itertools.batched, from Python 3.12 on)."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
