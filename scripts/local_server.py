"""The service in a subprocess on a free loopback port, for the scripts in this folder.

    with local_server(queue_limit=8) as server:   # CAPTIONER_QUEUE_LIMIT=8
        httpx.get(f"{server.url}/healthz")
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LocalServer:
    url: str
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_server(ready_timeout_s: float = 120, **settings):
    """uvicorn app.main:app with CAPTIONER_* settings from keyword arguments; yields once /readyz says 200."""
    env = {**os.environ} | {f"CAPTIONER_{key.upper()}": str(value) for key, value in settings.items()}
    env.setdefault("CAPTIONER_WEIGHTS_DIR", str(ROOT / "weights"))
    port = free_port()
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty server never blocks on a full pipe
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
             "--no-access-log"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        server = LocalServer(f"http://127.0.0.1:{port}", process)
        try:
            wait_until_ready(server, ready_timeout_s, log)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_ready(server: LocalServer, timeout_s: float, log) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited with {server.process.returncode}:\n{log.read().decode()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise TimeoutError(f"{server.url} not ready after {timeout_s} s")
