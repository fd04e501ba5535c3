"""The service in a subprocess on a free loopback port: for the tests, the benchmarks and the soak script.

    with running_server(queue_limit=8) as server:   # CAPTIONER_QUEUE_LIMIT=8
        httpx.get(f"{server.url}/healthz")
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path  # the server's stdout and stderr: a file, so a chatty server never blocks on a full pipe

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def running_server(wait_ready: bool = True, checkout: Path = ROOT, **settings) -> Iterator[Server]:
    """python -m app (uvicorn with the service's protocol and signal handling) in a subprocess on a free port, CAPTIONER_* settings from keyword arguments
    (weights_dir defaults to the shipped weights/, drain_delay_s to 0 so that the SIGTERM ending each server
    stops it at once; other CAPTIONER_* variables in the environment pass through). checkout: the
    folder whose code and weights run (another version's worktree, for bench.ab), by this Python."""
    env = {**os.environ, "CAPTIONER_WEIGHTS_DIR": str(Path(checkout) / "weights"), "CAPTIONER_DRAIN_DELAY_S": "0"}
    env |= {f"CAPTIONER_{key.upper()}": str(value) for key, value in settings.items()}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="captioner-server-") as folder:
        log = Path(folder) / "server.log"
        with log.open("w") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
                cwd=checkout, env=env, stdout=sink, stderr=subprocess.STDOUT,
            )
        server = Server(f"http://127.0.0.1:{port}", process, log)
        try:
            if wait_ready:
                wait_until_ready(server)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_ready(server: Server, timeout: float = 120) -> None:
    def alive() -> None:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}: {server.output()}")

    try:
        wait_for_readyz(server.url, alive, timeout)
    except TimeoutError as error:
        raise TimeoutError(f"{error}: {server.output()}") from None


def wait_for_readyz(url: str, alive: Callable[[], None], timeout: float = 120) -> None:
    """Poll url/readyz every 50 ms until it answers 200; alive() (which may be slow: podman inspect)
    is asked about once a second whether the server died meanwhile."""
    deadline = time.time() + timeout
    checked = 0.0
    while time.time() < deadline:
        if time.time() - checked >= 1:
            alive()
            checked = time.time()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s")
