"""Shared fixtures: a real uvicorn server on a free port (app.local_server), and images made with PIL."""
from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from app.local_server import ROOT, running_server

WEIGHTS = ROOT / "weights"
__all__ = ["ROOT", "WEIGHTS", "running_server"]  # the test modules import these from here
FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def figures(request) -> list[str]:
    """Lines a test measured (build time, image size...): printed in a "figures" section at the end of the run."""
    return request.config.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter, config):
    if lines := config.stash.get(FIGURES, []):
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def served():
    """The server with default settings, shared by the whole session."""
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def server(served) -> str:
    return served.url


def scene(size=(320, 240), colour="red") -> Image.Image:
    image = Image.new("RGB", size, (235, 235, 235))
    ImageDraw.Draw(image).ellipse([size[0] // 3, size[1] // 3, size[0] // 3 + 60, size[1] // 3 + 60], fill=colour)
    return image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()
