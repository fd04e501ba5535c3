"""Dynamic batching: requests that arrive together share one CNN pass and one beam search.

One inference thread runs the CNN and the beam search, the loading and warm-up included, so the
event loop never blocks and the CPU threads of torch are not oversubscribed (serving_threads);
photos reach it preprocessed, by the threads that decoded them (routes), so that their resizing
runs beside the models instead of in turn with them. The loop
collects whatever is queued, waits up to max_wait for more (up to max_batch_size), runs the CNN
once on all the images, then one batched beam search per distinct (decoding, num_captions) in the
batch.
The wait is skipped while requests come one at a time (the last batch held one): a lone client
would pay the whole window on every request and gain nothing.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from PIL import Image

from app.metrics import Metrics
from model.captioner import Captioner
from model.options import Decoding


T = TypeVar("T")
WARM_UP_IMAGE_SIZE = (320, 240)


def serving_threads(captioner: Captioner) -> None:
    """With the CNN on OpenVINO's (or ONNX Runtime's) own threads (all cores), torch's threads are
    left only the beam search. A second one speeds its matmuls up (a step 0.27 ms instead of 0.41),
    but it spins on the other core between them, where decoding, HTTP and the CNN's threads need it:
    in the server, one image at a time, beam 3, it bought 1.3 ms of a 25 ms request for 50% more CPU
    time per request (bench README). The eager CNN (a GPU, or no other runtime available) keeps
    torch's threads."""
    if captioner.encoder.runtime != "eager":
        torch.set_num_threads(1)


class Overloaded(Exception):
    """The queue is full."""


@dataclass(frozen=True)
class Params:
    decoding: Decoding
    num_captions: int = 1


@dataclass
class Job:
    pixels: torch.Tensor  # [3, size, size]: the photo as the encoder's preprocess gave it
    params: Params
    future: asyncio.Future = field(repr=False)


@dataclass
class Result:
    captions: list[tuple[str, float]]
    confidences: list[float] | None  # one per caption; None for uncalibrated weights
    batch_size: int


class Batcher:
    def __init__(self, metrics: Metrics, max_batch_size: int, max_wait_s: float, queue_limit: int):
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_limit)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.captioner: Captioner | None = None
        self.task: asyncio.Task | None = None

    async def start(self, load: Callable[[], Captioner]) -> Captioner:
        """Load the model and run one warm-up caption on the inference thread, then take requests.

        Loading on the thread that will run the model is measurably faster on CPU: loaded on another
        thread, the CNN took 38 ms instead of 21 ms a batch of one in the server."""

        def load_and_warm_up() -> Captioner:
            captioner = load()
            serving_threads(captioner)
            captioner.caption([Image.new("RGB", WARM_UP_IMAGE_SIZE, "gray")])
            return captioner

        self.captioner = await self._on_inference_thread(load_and_warm_up)
        self.task = asyncio.create_task(self._serve())
        return self.captioner

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _on_inference_thread(self, work: Callable[[], T]) -> T:
        def guarded() -> T:
            try:
                return work()
            except StopIteration as error:  # an asyncio future cannot carry it: the await would never end
                raise RuntimeError(f"StopIteration raised in model code: {error!r}") from error

        return await asyncio.get_running_loop().run_in_executor(self.executor, guarded)

    async def submit(self, pixels: torch.Tensor, params: Params, timeout_s: float) -> Result:
        """pixels: one photo, Captioner.encoder.preprocess's [3, size, size]. Raises Overloaded when the
        queue is full, asyncio.TimeoutError past timeout_s."""
        job = Job(pixels, params, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded from None
        self.metrics.queue_depth.set(self.queue.qsize())
        return await asyncio.wait_for(job.future, timeout_s)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        requests_come_together = False
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + (self.max_wait_s if requests_come_together else 0)
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            self.metrics.queue_depth.set(self.queue.qsize())
            requests_come_together = len(batch) > 1
            batch = [job for job in batch if not job.future.done()]  # their clients gave up (timeout)
            if not batch:
                continue
            try:
                results = await self._on_inference_thread(functools.partial(self._infer, batch))
            except Exception as error:  # a model failure answers its own requests, the service keeps going
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, (captions, confidences) in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(Result(captions, confidences, len(batch)))

    def _infer(self, batch: list[Job]) -> list[tuple[list[tuple[str, float]], list[float] | None]]:
        self.metrics.batch_size.observe(len(batch))
        started = time.perf_counter()
        features = self.captioner.encoder.encode_pixels(torch.stack([job.pixels for job in batch]))  # [B, D]
        encoded = time.perf_counter()
        self.metrics.stage_seconds.labels("cnn").observe(encoded - started)
        results: list = [None] * len(batch)
        for params in {job.params for job in batch}:
            rows = [i for i, job in enumerate(batch) if job.params == params]
            captions = self.captioner.describe(features[rows], params.decoding, params.num_captions)
            confidences = self.captioner.confidences(features[rows], captions) or [None] * len(rows)
            for row, per_image, confidence in zip(rows, captions, confidences):
                results[row] = (per_image, confidence)
        self.metrics.stage_seconds.labels("beam_search").observe(time.perf_counter() - encoded)
        return results
