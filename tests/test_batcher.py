"""The inference thread: its guard (model code that raises StopIteration must fail, not hang) and its torch threads."""
import asyncio
from pathlib import Path

import pytest
import torch

from app.batcher import Batcher, serving_threads
from app.metrics import Metrics
from model.captioner import Captioner


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


@pytest.mark.parametrize(("runtime", "threads_after"), [("onnxruntime", 1), ("eager", None)])
def test_torch_keeps_one_thread_only_when_onnx_runtime_runs_the_cnn(runtime, threads_after):
    """ONNX Runtime has threads of its own for the CNN; the eager CNN needs torch's."""
    captioner = Captioner.load(Path(__file__).parent.parent / "weights", "cpu", runtime=runtime)
    assert captioner.encoder.runtime == runtime
    before = torch.get_num_threads()
    try:
        serving_threads(captioner)
        assert torch.get_num_threads() == (threads_after or before)
    finally:
        torch.set_num_threads(before)
