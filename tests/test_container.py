"""The image as a user gets it: built with no package index, then run as an orchestrator runs it.

podman (Debian's package; `make test` installs it where it has root and apt) builds the Dockerfile
from a wheelhouse made by scripts/wheelhouse.py, with networking off for the build, on a Debian
bookworm base image that this test makes with mmdebstrap (no registry is reachable here). podman's
storage lives in /var/tmp/captioner-podman and outlasts a run, so the base image and the dependency
layer are made once per machine. The container then runs with a read-only root filesystem, a memory
limit and one CPU. Build time, image size and memory are printed in the "figures" section at the end.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.local_server import free_port, wait_for_readyz
from tests.conftest import ROOT, WEIGHTS

STORAGE = Path("/var/tmp/captioner-podman")
BASE = "localhost/captioner-base:bookworm"
IMAGE = "localhost/captioner:test"
MEMORY_LIMIT = "2g"
MEMORY_BUDGET = 400 * 2**20  # what the CPU image may hold after a caption (issue 30)
IMAGE_BUDGET = 800e6  # bytes: the CPU image, as podman counts them
PHOTO = ROOT.parent / "shared" / "data" / "flickr8k" / "Images" / "1000268201_693b08cb0e.jpg"

missing = [tool for tool in ("podman", "mmdebstrap") if not shutil.which(tool)]
pytestmark = pytest.mark.skipif(
    bool(missing) or os.geteuid() != 0,
    reason=f"no {' or '.join(missing)} (make test installs them with apt as root)" if missing else "podman needs root here",
)


def podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    command = ["podman", "--root", str(STORAGE / "root"), "--runroot", str(STORAGE / "runroot"), *args]
    result = subprocess.run(command, env={**os.environ, "CONTAINERS_CONF": str(ROOT / "tests" / "containers.conf")},
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def build(context: Path) -> subprocess.CompletedProcess:
    return podman("build", "--network", "none", "--format", "docker", "--build-arg", f"BASE={BASE}", "-t", IMAGE,
                  str(context), check=False)


def build_context(folder: Path, wheelhouse: Path, weights: Path | None) -> Path:
    """What `docker build .` sees in a checkout after scripts/wheelhouse.py: hard links, not copies."""
    folder.mkdir()
    for name in ("Dockerfile", ".dockerignore"):
        os.link(ROOT / name, folder / name)
    shutil.copytree(wheelhouse, folder / "wheelhouse", copy_function=os.link)
    if weights is not None:
        shutil.copytree(weights, folder / "weights")
    return folder


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory, figures) -> Path:
    out = tmp_path_factory.mktemp("wheels") / "wheelhouse"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "wheelhouse.py"), "--out", str(out)], check=True,
                   capture_output=True)
    figures.append(f"container: wheelhouse {sum(w.stat().st_size for w in out.glob('*.whl')) / 2**30:.2f} GiB "
                   f"gathered in {time.perf_counter() - started:.0f} s")
    return out


@pytest.fixture(scope="module")
def image(wheelhouse, tmp_path_factory, figures) -> str:
    if podman("image", "exists", BASE, check=False).returncode != 0:
        started = time.perf_counter()
        rootfs = tmp_path_factory.mktemp("base") / "rootfs.tar"
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                        "bookworm", str(rootfs)], check=True, capture_output=True, timeout=900)
        podman("import", str(rootfs), BASE)
        figures.append(f"container: base image {BASE} made in {time.perf_counter() - started:.0f} s")
    podman("image", "prune", "--force")  # the previous run's image, untagged by this one's
    started = time.perf_counter()
    result = build(build_context(tmp_path_factory.mktemp("context") / "ctx", wheelhouse, WEIGHTS))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cached = result.stdout.count("Using cache")
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout)
    figures.append(f"container: image built in {time.perf_counter() - started:.0f} s ({cached} steps from the layer cache), "
                   f"{size / 1e6:.0f} MB")
    assert size <= IMAGE_BUDGET, f"the CPU image is {size / 1e6:.0f} MB"
    return IMAGE


def run_container(image: str) -> tuple[str, str]:
    """Started the way deploy/deployment.yaml runs it: read-only root, memory limit, one CPU, no init."""
    name = f"captioner-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    podman("run", "--detach", "--name", name, "--read-only", "--memory", MEMORY_LIMIT, "--cpus", "1",
           "--publish", f"127.0.0.1:{port}:8000", image)
    return name, f"http://127.0.0.1:{port}"


@pytest.fixture
def container(image):
    name, url = run_container(image)
    started = time.perf_counter()
    try:
        def alive() -> None:
            assert podman("inspect", name, "--format", "{{.State.Running}}").stdout.strip() == "true", podman("logs", name).stderr

        wait_for_readyz(url, alive)
        yield name, url, time.perf_counter() - started
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.mark.skipif(not PHOTO.is_file(), reason=f"the shared Flickr8k photo {PHOTO} is not there")
def test_the_container_captions_a_photo_as_the_weights_do_in_process(container, figures):
    name, url, seconds_to_ready = container
    response = httpx.post(f"{url}/v1/captions", files={"image": ("photo.jpg", PHOTO.read_bytes(), "image/jpeg")}, timeout=60)
    assert response.status_code == 200, response.text

    from runtime.captioner import Captioner  # the same weights, in this process

    with Image.open(PHOTO) as photo:
        [[(expected, _)]] = Captioner.load(WEIGHTS, "cpu").caption([photo.convert("RGB")])
    assert response.json()["captions"][0]["text"] == expected
    logs = podman("logs", name)
    assert "CNN through openvino-" in logs.stdout + logs.stderr  # the fast runtime loads in the image too
    memory = podman("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout.strip()
    used = int(podman("exec", name, "sh", "-c", "cat /sys/fs/cgroup/memory.current 2>/dev/null "  # the container's cgroup: v2, or v1
                      "|| cat /sys/fs/cgroup/memory/memory.usage_in_bytes").stdout)
    assert used < MEMORY_BUDGET, f"{used / 2**20:.0f} MiB after one caption"
    figures.append(f"container: ready {seconds_to_ready:.1f} s after start; memory after a caption {memory} "
                   f"(cgroup {used / 2**20:.0f} MiB)")


def test_the_cpu_image_holds_no_torch(image):
    found = podman("run", "--rm", image, "python", "-c", "import importlib.util; print(importlib.util.find_spec('torch'))")
    assert found.stdout.strip() == "None"


def test_the_container_runs_as_a_user_and_its_healthcheck_passes(container):
    name, _, _ = container
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    assert podman("exec", name, "touch", "/srv/captioner/weights/x", check=False).returncode != 0  # read-only root
    assert podman("healthcheck", "run", name, check=False).returncode == 0


def test_sigterm_stops_the_container_within_10_s_answering_what_is_in(container, figures):
    """As `kubectl delete pod` or `docker stop` does it: SIGTERM to PID 1 (no init in between)."""
    name, url, _ = container
    image_bytes = PHOTO.read_bytes() if PHOTO.is_file() else (ROOT / "docs" / "examples" / "cameraman.jpg").read_bytes()

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            posts = [asyncio.create_task(client.post(f"{url}/v1/captions", params={"beam_size": 10, "max_length": 50},
                                                     files={"image": ("photo.jpg", image_bytes, "image/jpeg")})) for _ in range(4)]
            await asyncio.sleep(0.3)
            podman("kill", "--signal", "TERM", name)
            signalled = time.perf_counter()
            await asyncio.sleep(0.3)
            readyz = await client.get(f"{url}/readyz")
            responses = await asyncio.gather(*posts)
            exit_code = int(podman("wait", name, timeout=30).stdout.strip())
            return readyz, responses, exit_code, time.perf_counter() - signalled

    readyz, responses, exit_code, seconds = asyncio.run(burst())
    assert readyz.status_code == 503
    assert [r.status_code for r in responses] == [200] * 4
    assert exit_code == 0 and seconds < 10, (exit_code, seconds)
    figures.append(f"container: SIGTERM to exit {seconds:.1f} s (drain delay 3 s), 4 requests in flight all answered")


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_the_build_refuses_weights_that_do_not_match_or_are_missing(wheelhouse, image, tmp_path, damage):
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS, weights)
    if damage == "changed":
        vocab = weights / "vocab.json"
        vocab.write_text(vocab.read_text().replace('"a"', '"an"', 1))
        context = build_context(tmp_path / "ctx", wheelhouse, weights)
    else:
        context = build_context(tmp_path / "ctx", wheelhouse, None)
    result = build(context)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    if damage == "changed":
        assert "weights/vocab.json does not match its manifest" in log, log[-2000:]
    else:
        assert "weights" in log and "no such file or directory" in log.lower(), log[-2000:]
