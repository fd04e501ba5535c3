"""The inference thread's guard: model code that raises StopIteration must fail, not hang."""
import asyncio

import pytest

from app.batcher import Batcher
from app.metrics import Metrics


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
