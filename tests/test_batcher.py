"""The inference thread: its guard (model code that raises StopIteration must fail, not hang) and its stop."""
import asyncio
from pathlib import Path

import pytest
from PIL import Image

from app.batcher import Batcher, Params
from app.metrics import Metrics
from runtime.captioner import Captioner
from runtime.options import Decoding

WEIGHTS = Path(__file__).parent.parent / "weights"


def test_stop_iteration_while_loading_fails_the_start_instead_of_hanging():
    """asyncio cannot put StopIteration into a future: unguarded, the await would never return and
    readyz would answer 503 forever instead of the process exiting with a message."""
    batcher = Batcher(Metrics(), max_batch_size=4, max_wait_s=0.001, queue_limit=8)

    def load():
        raise StopIteration("no parameters")

    async def start():
        try:
            return await asyncio.wait_for(batcher.start(load), 10)
        finally:
            await batcher.stop()

    with pytest.raises(RuntimeError, match="StopIteration raised in model code"):
        asyncio.run(start())


def test_stop_returns_once_the_inference_thread_has_ended():
    """The process exits right after stop: with the thread still alive, OpenVINO's teardown aborted
    it after a clean shutdown in about one exit in two (SIGTERM, then status 134 instead of 0)."""
    batcher = Batcher(Metrics(), max_batch_size=4, max_wait_s=0.001, queue_limit=8)

    async def serve_one_then_stop():
        captioner = await batcher.start(lambda: Captioner.load(WEIGHTS, "cpu"))
        pixels = captioner.preprocess(Image.new("RGB", (64, 48), "red"))
        result = await batcher.submit(pixels, Params(Decoding(beam_size=2, max_length=6)), timeout_s=30)
        assert batcher.thread.is_alive()
        await batcher.stop()
        return result

    assert asyncio.run(serve_one_then_stop()).captions
    assert not batcher.thread.is_alive()
