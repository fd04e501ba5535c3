"""Dynamic batching: requests that arrive together share one CNN pass and one beam search.

One inference thread runs the CNN and the beam search, the loading and warm-up included, so the
event loop never blocks and the runtimes' CPU threads are not oversubscribed;
photos reach it preprocessed, by the threads that decoded them (routes), so that their resizing
runs beside the models instead of in turn with them. The thread takes its batches from a
thread-safe queue itself: as soon as one batch is done it takes whatever has queued meanwhile,
without waiting for the event loop, which may be busy with HTTP, to hand it the next. It waits
up to max_wait for more (up to max_batch_size), runs the CNN once on all the images, then one
batched beam search per distinct (decoding, num_captions) in the batch, and hands the results
back to the event loop.
The wait is skipped while requests come one at a time (the last batch held one): a lone client
would pay the whole window on every request and gain nothing.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

from app.metrics import Metrics
from runtime.captioner import Captioner
from runtime.options import Decoding
from runtime.tags import Tag


WARM_UP_IMAGE_SIZE = (320, 240)


class Overloaded(Exception):
    """The queue is full."""


@dataclass(frozen=True)
class Params:
    decoding: Decoding
    num_captions: int = 1


@dataclass
class Job:
    pixels: np.ndarray  # [3, size, size]: the photo as Captioner.preprocess gave it
    params: Params
    future: asyncio.Future = field(repr=False)


@dataclass
class Result:
    captions: list[tuple[str, float]]
    confidences: list[float] | None  # one per caption; None for uncalibrated weights
    tags: list[Tag]
    batch_size: int


class Batcher:
    def __init__(self, metrics: Metrics, max_batch_size: int, max_wait_s: float, queue_limit: int):
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_limit)  # None: stop
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    async def start(self, load: Callable[[], Captioner]) -> Captioner:
        """Load the model and run one warm-up caption on the inference thread, then take requests.

        Loading on the thread that will run the model is measurably faster on CPU: loaded on another
        thread, the CNN took 38 ms instead of 21 ms a batch of one in the server."""
        loop = asyncio.get_running_loop()
        loaded = loop.create_future()
        self.thread = threading.Thread(target=self._run, args=(load, loop, loaded), name="inference", daemon=True)
        self.thread.start()
        return await loaded

    async def stop(self) -> None:
        """Stop the inference thread and wait for it to end; a batch in hand is answered first. The
        process exits right after: with the thread still alive then, OpenVINO's teardown aborted it
        in about one clean shutdown in two (status 134 after SIGTERM)."""
        self.stopping.set()
        try:
            self.queue.put_nowait(None)  # wakes the thread if it waits for work
        except queue.Full:  # it is busy and sees stopping after this batch
            pass
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join)

    async def submit(self, pixels: np.ndarray, params: Params, timeout_s: float) -> Result:
        """pixels: one photo, Captioner.preprocess's [3, size, size]. Raises Overloaded when the
        queue is full, asyncio.TimeoutError past timeout_s."""
        job = Job(pixels, params, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise Overloaded from None
        self.metrics.queue_depth.set(self.queue.qsize())
        return await asyncio.wait_for(job.future, timeout_s)

    def _run(self, load: Callable[[], Captioner], loop: asyncio.AbstractEventLoop, loaded: asyncio.Future) -> None:
        """The inference thread: load and warm up, then serve batches until stop."""
        try:
            captioner = prepare(load())
        except Exception as error:
            _settle(loop, loaded, error=_passable(error))
            return
        _settle(loop, loaded, captioner)
        requests_come_together = False
        while not self.stopping.is_set():
            batch = self._next_batch(wait_s=self.max_wait_s if requests_come_together else 0)
            requests_come_together = len(batch) > 1
            batch = [job for job in batch if not job.future.done()]  # their clients gave up (timeout)
            if not batch:
                continue
            try:
                results = infer(captioner, [job.pixels for job in batch], [job.params for job in batch], self.metrics)
            except Exception as error:  # a model failure answers its own requests, the service keeps going
                for job in batch:
                    _settle(loop, job.future, error=_passable(error))
                continue
            for job, result in zip(batch, results):
                _settle(loop, job.future, result)

    def _next_batch(self, wait_s: float) -> list[Job]:
        """The next job, whenever it comes, then whatever follows it within wait_s, up to max_batch_size."""
        batch = [self.queue.get()]
        deadline = time.monotonic() + wait_s
        while len(batch) < self.max_batch_size:
            try:  # a timeout of 0 takes only what is already queued
                batch.append(self.queue.get(timeout=max(deadline - time.monotonic(), 0)))
            except queue.Empty:
                break
        self.metrics.queue_depth.set(self.queue.qsize())
        return [job for job in batch if job is not None]


def prepare(captioner: Captioner) -> Captioner:
    """A loaded model made ready to serve, on the thread that will run it: numpy's BLAS kept to one
    thread, then one warm-up caption (first-call allocations). The BLAS calls (the tags' classifier,
    the reranker's read-out) are a few small products per batch; on every core, BLAS's threads spin
    between them and took the cores from OpenVINO's: the server's CPU time per request was 40 ms
    instead of 19.6 (8 clients, 2-core EPYC, bench.ab)."""
    threadpool_limits(1, user_api="blas")
    captioner.caption([Image.new("RGB", WARM_UP_IMAGE_SIZE, "gray")])
    return captioner


def infer(captioner: Captioner, pixels: list[np.ndarray], params: list[Params], metrics: Metrics) -> list[Result]:
    """One batch, the service's inference step (the batcher's, and app.bulk's in process): the CNN
    once on all the photos (each Captioner.preprocess's [3, size, size]), then one batched
    beam search per distinct params among them. Per photo, in order: its captions, their
    confidences and its tags. metrics gets the batch size and each stage's time."""
    metrics.batch_size.observe(len(pixels))
    started = time.perf_counter()
    features = captioner.encode_pixels(np.stack(pixels))  # [B, D]
    encoded = time.perf_counter()
    metrics.stage_seconds.labels("cnn").observe(encoded - started)
    results: list = [None] * len(pixels)
    for group in set(params):
        rows = [i for i, p in enumerate(params) if p == group]
        tags = captioner.tags(features[rows], group.decoding)
        captions = captioner.describe(features[rows], group.decoding, group.num_captions, tags)
        confidences = captioner.confidences(features[rows], captions) or [None] * len(rows)
        for row, per_image, confidence, image_tags in zip(rows, captions, confidences, tags):
            results[row] = Result(per_image, confidence, image_tags, len(pixels))
    metrics.stage_seconds.labels("beam_search").observe(time.perf_counter() - encoded)
    return results


def _passable(error: Exception) -> Exception:
    """An asyncio future cannot carry StopIteration: the await would never end."""
    if isinstance(error, StopIteration):
        return RuntimeError(f"StopIteration raised in model code: {error!r}")
    return error


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: object = None, *,
            error: Exception | None = None) -> None:
    """From the inference thread: set the future's result or error on its event loop, unless its
    awaiter has given up (timeout, cancellation) or the loop has closed (shutdown)."""

    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop is closed: nobody is waiting any more
        pass
