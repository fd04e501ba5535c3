"""Shared fixtures: a real uvicorn server on a free port, and images made with PIL."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(wait_ready: bool = True, **settings):
    """uvicorn app.main:app in a subprocess, CAPTIONER_* settings from keyword arguments."""
    port = free_port()
    env = {**os.environ, "CAPTIONER_WEIGHTS_DIR": str(WEIGHTS), "CAPTIONER_DEVICE": "cpu"}
    env |= {f"CAPTIONER_{key.upper()}": str(value) for key, value in settings.items()}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_ready:
            wait_until_ready(url, process)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@pytest.fixture(scope="session")
def server():
    with running_server() as (url, _):
        yield url


def scene(size=(320, 240), colour="red") -> Image.Image:
    image = Image.new("RGB", size, (235, 235, 235))
    ImageDraw.Draw(image).ellipse([size[0] // 3, size[1] // 3, size[0] // 3 + 60, size[1] // 3 + 60], fill=colour)
    return image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
