"""Reliability: upload limits, slow clients, overload, a soak, training killed or fed bad data, and
tampered weights. Real servers over HTTP, real training runs in subprocesses. (The container's
user and command: tests/test_dockerfile.py.)"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
import pytest
import torch

from model.encoder import build_encoder
from model.features import extract_features
from runtime.weights import MANIFEST_FILE, verify
from tests.conftest import ROOT, WEIGHTS, encoded, running_server, scene

MiB = 2**20
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname, parsed.port


def caption(url: str, data: bytes, timeout: float = 60, **params) -> httpx.Response:
    return httpx.post(f"{url}/v1/captions", params=params, files={"image": ("x.jpg", data, "image/jpeg")}, timeout=timeout)


# Upload limits, on the shared server (10 MiB, 40 million pixels).


@contextmanager
def peak_rss(pid: int):
    """Samples the process's RSS every few milliseconds; yields a dict whose 'growth' is set on exit."""
    process = psutil.Process(pid)
    result = {"baseline": process.memory_info().rss, "peak": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            result["peak"] = max(result["peak"], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["growth"] = max(result["peak"], process.memory_info().rss) - result["baseline"]


def http_reply_complete(reply: bytes) -> bool:
    head, separator, body = reply.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return bool(separator and length and len(body) >= int(length.group(1)))


def healthz_on(connection: socket.socket) -> bytes:
    """GET /healthz on an open connection, which stays open (keep-alive); returns the whole reply."""
    connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = b""
    while not http_reply_complete(reply):
        reply += connection.recv(4096)
    return reply


def stream_request(url: str, head: bytes, chunks, timeout: float = 30) -> tuple[bytes, int, bool]:
    """Send the head, then body chunks for as long as the server takes them, reading all the while,
    until the server closes the connection. Returns (its reply, body bytes it took, whether it closed)."""
    reply, sent, pending = b"", 0, b""
    with socket.create_connection(address(url), timeout=timeout) as connection:
        connection.sendall(head)
        connection.setblocking(False)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not pending:
                pending = next(chunks, b"")
            readable, writable, _ = select.select([connection], [connection] if pending else [], [], 1)
            try:
                if readable:  # read first: the reply may come long before the body is done
                    data = connection.recv(65536)
                    if not data:
                        return reply, sent, True
                    reply += data
                elif writable:
                    taken = connection.send(pending)
                    pending, sent = pending[taken:], sent + taken
            except (BrokenPipeError, ConnectionResetError):
                return reply + unread(connection), sent, True
    return reply, sent, False


def unread(connection: socket.socket) -> bytes:
    """What the server sent before it reset the connection and we noticed on a send: still ours to read."""
    data = b""
    connection.setblocking(True)
    connection.settimeout(1)
    try:
        while chunk := connection.recv(65536):
            data += chunk
    except OSError:
        pass  # the reset itself, once the queued bytes are read
    return data


def status_and_json(reply: bytes) -> tuple[int, dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


HUNDRED_MB = 100 * 10**6
PART_HEAD = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'


def zeros(total: int, size: int = 256 * 1024):
    for _ in range(total // size):
        yield b"\0" * size


def chunked(chunks):
    for chunk in chunks:
        yield b"%x\r\n%s\r\n" % (len(chunk), chunk)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_100_mb_upload_is_refused_without_being_read(served, framing):
    """413, with the server's memory nowhere near 100 MB bigger and most of the body never taken:
    a declared size over the limit is refused before reading; a chunked body is cut off at the limit."""
    head = b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    if framing == "content-length":
        head += b"Content-Length: %d\r\n\r\n" % HUNDRED_MB
        body = chain([PART_HEAD], zeros(HUNDRED_MB))
    else:
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        body = chunked(chain([PART_HEAD], zeros(HUNDRED_MB)))
    with peak_rss(served.process.pid) as rss:
        reply, sent, closed = stream_request(served.url, head, body)
    assert status_and_json(reply) == (413, {"detail": "request body over the limit of 10485760 bytes"})
    assert closed
    assert sent < HUNDRED_MB / 4  # the limit, plus what the sockets' buffers hold
    assert rss["growth"] < 30 * MiB, rss
    assert caption(served.url, encoded(scene(), "JPEG")).status_code == 200


def png(width: int, height: int, bit_depth: int, colour_type: int, bytes_per_row: int) -> bytes:
    """A complete, valid PNG of one flat colour: its rows compress to almost nothing."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + bytes_per_row)  # filter byte, then the pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def bilevel_png(width: int, height: int) -> bytes:
    """1 bit a pixel: 20000x20000 compresses to a few tens of kB, while decoding it would take 400 MB
    (PIL keeps a byte a pixel) and 1.2 GB as RGB."""
    return png(width, height, 1, 0, (width + 7) // 8)


def rgb_png(width: int, height: int) -> bytes:
    return png(width, height, 8, 2, 3 * width)


def test_a_whole_20000x20000_image_is_refused_before_decoding(served):
    data = bilevel_png(20_000, 20_000)
    assert len(data) < 200_000
    with peak_rss(served.process.pid) as rss:
        started = time.perf_counter()
        response = caption(served.url, data)
        seconds = time.perf_counter() - started
    assert response.status_code == 413
    assert "more than 40000000 pixels" in response.json()["detail"]
    assert seconds < 2 and rss["growth"] < 50 * MiB, (seconds, rss)


def test_many_big_images_at_once_take_bounded_memory(served):
    """16 uploads of a 100 kB PNG of 6000x6000 pixels (within the pixel limit) at once. Each decodes
    to 108 MB of RGB: decoded all at once, and each kept full-size while it waits for the model,
    that was 16 x 365 MB. Decoding a few at a time, and shrinking each to what the encoder uses,
    keeps it to what a couple of decodes take."""
    data = rgb_png(6000, 6000)
    assert len(data) < 200_000

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(f"{served.url}/v1/captions", files={"image": ("x.png", data, "image/png")}) for _ in range(16)
            ])

    with peak_rss(served.process.pid) as rss:
        responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 16
    assert rss["growth"] < 1024 * MiB, rss


# Slow clients and overload: one server with a short body timeout and the queue limit.

BODY_TIMEOUT_S = 3
HEADER_TIMEOUT_S = 3
DRAIN_DELAY_S = 2


@pytest.fixture(scope="module")
def strict():
    with running_server(queue_limit=8, body_timeout_s=BODY_TIMEOUT_S, header_timeout_s=HEADER_TIMEOUT_S) as server:
        yield server


async def trickle(url: str, data: bytes, interval_s: float, at_once: bytes = b"") -> bytes:
    """Send `at_once`, then `data` a byte at a time, reading all the while; returns what the server
    answered once it has closed the connection (which it may do before the end of `data`)."""
    reader, writer = await asyncio.open_connection(*address(url))
    writer.write(at_once)
    reply = bytearray()

    async def read_until_closed():
        try:
            while chunk := await reader.read(65536):
                reply.extend(chunk)
        except ConnectionError:
            pass  # reset: the server closed with some of our bytes unread

    reading = asyncio.create_task(read_until_closed())
    try:
        for byte in data:
            if reading.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval_s)
    except ConnectionError:
        pass
    try:
        await asyncio.wait_for(reading, 30)
    finally:
        writer.close()
    return bytes(reply)


SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
UPLOAD_HEAD = (b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
               b"Content-Length: 100000\r\n\r\n")
SLOW_BODY = PART_HEAD + b"\0" * 1000


def test_slow_clients_do_not_hold_up_the_others(strict):
    """20 clients sending their headers a byte at a time, 20 their bodies: captions for others still
    come at once, and the slow uploads get 408 once the body timeout has passed."""
    image = encoded(scene(), "JPEG")

    async def scenario():
        slow_heads = [asyncio.create_task(trickle(strict.url, SLOW_HEAD, 0.2)) for _ in range(20)]
        slow_uploads = [asyncio.create_task(trickle(strict.url, SLOW_BODY, 0.05, UPLOAD_HEAD)) for _ in range(20)]
        await asyncio.sleep(0.5)  # all 40 connected and part-way through
        async with httpx.AsyncClient(timeout=30) as client:
            started = time.perf_counter()
            normal = await asyncio.gather(*[
                client.post(f"{strict.url}/v1/captions", files={"image": ("x.jpg", image, "image/jpeg")})
                for _ in range(8)
            ])
            normal_seconds = time.perf_counter() - started
        upload_replies = await asyncio.gather(*slow_uploads)
        for task in slow_heads:
            task.cancel()
        await asyncio.gather(*slow_heads, return_exceptions=True)
        return normal, normal_seconds, upload_replies

    normal, normal_seconds, upload_replies = asyncio.run(scenario())
    assert [r.status_code for r in normal] == [200] * 8
    assert normal_seconds < BODY_TIMEOUT_S  # served while all the slow clients were still connected
    assert [reply[:13] for reply in upload_replies] == [b"HTTP/1.1 408 "] * 20


def test_a_trickled_upload_gets_408_and_its_connection_closed(strict):
    started = time.perf_counter()
    reply = asyncio.run(trickle(strict.url, SLOW_BODY, 0.05, UPLOAD_HEAD))
    seconds = time.perf_counter() - started  # trickle returns once the server has closed the connection
    assert status_and_json(reply) == (408, {"detail": f"request body not received within {float(BODY_TIMEOUT_S)} s"})
    assert b"\r\nconnection: close\r\n" in reply.lower()
    assert BODY_TIMEOUT_S <= seconds < BODY_TIMEOUT_S + 2


def test_an_idle_keep_alive_connection_is_closed(strict):
    """uvicorn's --timeout-keep-alive (5 s by default) closes a connection that sends nothing more."""
    with socket.create_connection(address(strict.url), timeout=30) as connection:
        assert healthz_on(connection).startswith(b"HTTP/1.1 200 ")
        started = time.perf_counter()
        assert connection.recv(4096) == b""  # closed by the server
        assert 4 < time.perf_counter() - started < 10


@pytest.mark.parametrize("first_request", [True, False], ids=["new-connection", "kept-alive-connection"])
def test_a_request_head_sent_a_byte_at_a_time_is_cut_after_the_header_timeout(strict, first_request):
    """Slowloris: a client that trickles its request line and headers is closed CAPTIONER_HEADER_TIMEOUT_S
    after it began, on a new connection and on the next request of a kept-alive one."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(address(strict.url), timeout=30) as connection:
        if not first_request:
            assert healthz_on(connection).startswith(b"HTTP/1.1 200 ")
        started = time.perf_counter()
        connection.setblocking(False)
        closed = False
        for byte in head:  # one byte every 50 ms: over 10 s in all, far past the deadline
            try:
                connection.send(bytes([byte]))
                closed = connection.recv(4096) == b""
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            if closed:
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    assert closed and HEADER_TIMEOUT_S - 0.5 <= seconds < HEADER_TIMEOUT_S + 2, seconds
    assert httpx.get(f"{strict.url}/healthz").status_code == 200


def test_sigterm_drains_readyz_503_then_answers_every_request_already_in_and_exits_0():
    """The clean stop an orchestrator expects: after SIGTERM /readyz answers 503 at once while captions
    are still taken for the drain delay; then no new connection is taken, the requests already in
    (running or queued) are all answered, and the process exits with status 0."""
    image = encoded(scene(), "JPEG")
    with running_server(max_batch_size=1, drain_delay_s=DRAIN_DELAY_S) as server:
        async def burst():
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=10)) as client:
                def post():
                    return asyncio.create_task(client.post(f"{server.url}/v1/captions", params={"beam_size": 10, "max_length": 50},
                                                           files={"image": ("x.jpg", image, "image/jpeg")}))
                posts = [post() for _ in range(8)]
                await asyncio.sleep(0.5)  # all eight sent; one at a time through the model, most wait in the queue
                signalled = time.perf_counter()
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                readyz = await client.get(f"{server.url}/readyz")
                posts.append(post())  # during the drain delay: still taken
                await asyncio.sleep(DRAIN_DELAY_S + 0.3 - (time.perf_counter() - signalled))
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{server.url}/healthz")  # the listening socket is closed
                return readyz, await asyncio.gather(*posts)

        readyz, responses = asyncio.run(burst())
        assert readyz.status_code == 503 and "shutting down" in readyz.json()["detail"]
        assert [r.status_code for r in responses] == [200] * 9
        assert server.process.wait(timeout=10) == 0
        assert "Finished server process" in server.output()


def test_sigterm_while_the_model_loads_exits_0():
    """An orchestrator may stop a pod that is still starting. The inference thread is then loading
    OpenVINO's models: the process waits for it, instead of exiting under it (status 134: aborted)."""
    with running_server(wait_ready=False) as server:
        deadline = time.time() + 60
        while True:
            try:
                readyz = httpx.get(f"{server.url}/readyz", timeout=1)
                break
            except httpx.TransportError:  # not listening yet
                assert time.time() < deadline
                time.sleep(0.02)
        assert readyz.status_code == 503  # loading
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.output()[-3000:]
        assert "ready:" not in server.output()  # it stopped before the model was ready


def test_an_endless_header_is_cut_off(strict):
    """h11 buffers at most 16 kB of an unfinished request head; past that uvicorn answers 400 and closes."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: "
    reply, _, closed = stream_request(strict.url, head, iter([b"a" * 4096] * 256))  # 1 MiB of one header
    assert reply.startswith(b"HTTP/1.1 400 ") and b"Invalid HTTP request" in reply
    assert closed


def test_overload_64_clients_queue_limit_8(strict):
    """The issue's scenario: the excess get 503 + Retry-After at once (no refusal waits for the queue to
    drain: half of them arrive before half of the captions, all before the last), the admitted all
    succeed, and the service answers normally afterwards. The client sends its 64 requests one after
    another, and the inference thread starts on the first while the rest are still being read, so the
    first captions can come back before the last refusals: hence half, not all, before half of the
    captions."""
    image = encoded(scene(), "JPEG")

    async def timed(client):
        started = time.perf_counter()
        response = await client.post(f"{strict.url}/v1/captions", params={"beam_size": 10, "max_length": 50},
                                     files={"image": ("x.jpg", image, "image/jpeg")})
        return response, time.perf_counter() - started

    async def burst():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*[timed(client) for _ in range(64)])

    results = asyncio.run(burst())
    admitted = [seconds for response, seconds in results if response.status_code == 200]
    refused = [(response, seconds) for response, seconds in results if response.status_code == 503]
    assert len(admitted) + len(refused) == 64
    assert len(admitted) >= 8 and refused
    assert all(r.headers["Retry-After"] == "1" and "retry" in r.json()["detail"] for r, _ in refused)
    refusals = sorted(seconds for _, seconds in refused)
    admitted.sort()
    assert refusals[len(refusals) // 2] < admitted[len(admitted) // 2] and refusals[-1] < admitted[-1], (refusals, admitted)
    assert caption(strict.url, image).status_code == 200
    assert httpx.get(f"{strict.url}/readyz").status_code == 200


def test_soak_300_requests(tmp_path):
    """scripts/soak.py, cut down: its own server, no 5xx, RSS within 10% of its level after 100 requests."""
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "scripts/soak.py", "--requests", "300", "--baseline-after", "100", "--out", str(out)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["server_errors"] == 0 and report["transport_errors"] == 0
    assert report["statuses"]["200"] > 250 and set(report["statuses"]) <= {"200", "400", "413", "415"}
    assert report["rss_within_10_percent"]


# Training: killed, fed bad images or bad captions, short of disk.


def python(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """40 synthetic scenes (32 train, 4 val, 4 test) and a feature cache shared by the training tests."""
    root = tmp_path_factory.mktemp("tiny")
    result = python("-m", "model.synthetic", "--out", str(root / "data"), "--n", "40", "--seed", "2")
    assert result.returncode == 0, result.stderr
    return root


def train_command(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "model.train", "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
            "--hidden-dim", "32", "--embed-dim", "16", "--min-count", "1", "--batch-size", "32", "--workers", "0",
            *extra]


def checkpoint_version(path: Path) -> tuple[int, int] | None:
    """Changes with every save: each one renames a new file over the old."""
    return (path.stat().st_ino, path.stat().st_mtime_ns) if path.exists() else None


def test_kill_9_at_random_moments_never_leaves_a_broken_checkpoint(tiny_set, tmp_path):
    """SIGKILL again and again, resuming each time: at random moments (a random time after the
    first or second save of the round) and right inside a save over an existing checkpoint.
    checkpoint.pt, whenever it exists, loads whole; the run then finishes and its weights verify.

    CAPTIONER_KILL_ROUNDS sets how many kills (default 4). A wider decoder (hidden 256, a 20 MB
    checkpoint) makes each save last long enough to be hit."""
    out, epochs = tmp_path / "run", 12
    command = train_command(tiny_set / "data", out, tiny_set / "cache", "--epochs", str(epochs), "--patience", str(epochs))
    command[command.index("--hidden-dim") + 1] = "256"
    command[command.index("--batch-size") + 1] = "160"  # one step an epoch: the time goes to validating and saving
    checkpoint = out / "checkpoint.pt"
    unfinished_saves = lambda: set(out.glob(".checkpoint.pt.*.tmp"))  # noqa: E731
    rng = random.Random()
    kills_inside_saves = 0
    for round_ in range(int(os.environ.get("CAPTIONER_KILL_ROUNDS", "4"))):
        left_by_earlier_kills = unfinished_saves()  # the new process deletes them as it starts
        resume = ["--resume"] if checkpoint.exists() else []
        process = subprocess.Popen(command + resume, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        if round_ % 2:  # the moment a save starts writing over an existing checkpoint
            while not (unfinished_saves() - left_by_earlier_kills and checkpoint.exists()) and process.poll() is None \
                    and time.time() < deadline:
                time.sleep(0.001)
        else:  # anywhere in training, validating or saving
            saves_to_wait_for, version = rng.choice([1, 2]), checkpoint_version(checkpoint)
            while saves_to_wait_for and process.poll() is None and time.time() < deadline:
                if checkpoint_version(checkpoint) != version:
                    saves_to_wait_for, version = saves_to_wait_for - 1, checkpoint_version(checkpoint)
                time.sleep(0.001)
            time.sleep(rng.uniform(0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills_inside_saves += bool(unfinished_saves() - left_by_earlier_kills)
        if checkpoint.exists():
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            assert state["epoch"] + 1 == len(state["history"])
    assert kills_inside_saves > 0  # the temporary file a kill left half-written proves it hit a save

    finished = subprocess.run(command + ["--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert torch.load(checkpoint, weights_only=True)["epoch"] == epochs - 1
    assert not list(out.glob(".*.tmp"))  # the half-written files of the kills are gone
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["epoch"] == epochs
    verify(out / "best")


def test_resuming_a_run_that_stopped_early_trains_no_further(tiny_set, tmp_path):
    """Killed while finishing (scoring the test split, exporting) after an early stop, a run resumed
    must only finish, as the uninterrupted run did. With a learning rate of 0 the validation score
    never improves, so patience 1 stops it after epoch 2 of 5."""
    out = tmp_path / "run"
    command = train_command(tiny_set / "data", out, tiny_set / "cache", "--epochs", "5", "--patience", "1", "--lr", "0")
    first = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and "early stop" in first.stdout, first.stderr[-3000:]
    resumed = subprocess.run(command + ["--resume"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "epoch   3/5" not in resumed.stdout
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


def damage(images: Path, names: list[str]) -> tuple[Path, Path]:
    """The first named image overwritten by junk, the second cut in half."""
    junk, truncated = images / names[0], images / names[1]
    junk.write_bytes(b"this is not an image, whatever its name says")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    return junk, truncated


def test_feature_extraction_skips_unreadable_images_and_names_them(tiny_set, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(tiny_set / "data" / "Images", images)
    paths = sorted(images.iterdir())[:6]
    junk, truncated = damage(images, [paths[1].name, paths[4].name])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = extract_features(build_encoder(), paths, tmp_path / "cache", workers=0)
    assert table.skipped == [junk, truncated]
    assert table.paths == [p for p in paths if p not in (junk, truncated)]
    assert table.features.shape[0] == 4 and torch.isfinite(table.features).all()
    messages = [str(w.message) for w in caught if "skipping unreadable image" in str(w.message)]
    assert [m.split(":")[0] for m in messages] == [f"skipping unreadable image {junk}", f"skipping unreadable image {truncated}"]


def test_training_skips_unreadable_images(tiny_set, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_set / "data", data)
    train_names = (data / "Flickr_8k.trainImages.txt").read_text().split()
    junk, truncated = damage(data / "Images", train_names[:2])
    result = python(*train_command(data, tmp_path / "run", tmp_path / "cache", "--epochs", "1")[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping unreadable image {junk}" in result.stderr
    assert f"skipping unreadable image {truncated}" in result.stderr
    assert "skipped 2 unreadable images" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_caption_line_stops_training_naming_the_line(tiny_set, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_set / "data", data)
    captions = data / "captions.txt"
    lines = captions.read_text().splitlines()
    lines[7] = lines[7].split(",")[0]  # line 8: an image name and no caption
    captions.write_text("\n".join(lines) + "\n")
    result = python(*train_command(data, tmp_path / "run", tmp_path / "cache", "--epochs", "1")[1:])
    assert result.returncode != 0
    assert f"{captions}:8: missing caption" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@contextmanager
def tiny_disk(path: Path, size: str = "1m"):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("full", ["out", "cache"])
def test_a_full_disk_stops_training_before_it_starts(tiny_set, tmp_path, full):
    """Either the run folder or the feature cache on a 1 MB disk: a clear message before any work."""
    with tiny_disk(tmp_path / "disk") as disk:
        out = disk / "out" if full == "out" else tmp_path / "run"
        cache = disk / "cache" if full == "cache" else tiny_set / "cache"
        result = python(*train_command(tiny_set / "data", out, cache, "--epochs", "1")[1:])
    assert result.returncode != 0
    # the whole of stderr: no traceback, and no progress bar of a feature extraction started regardless
    assert re.fullmatch(rf"error: only [01] MiB free in {disk / full}; need 200 MiB\n", result.stderr)
    assert not (out / "log.jsonl").exists()


# Weights: any change to what the manifest vouches for stops the start.


def edit_manifest(manifest: dict, edit: str) -> None:
    if edit == "a file's sha256":
        manifest["files"]["vocab.json"] = manifest["files"]["vocab.json"][:-1] + "0"
    elif edit == "the model id":
        manifest["model_id"] = "captioner-000000000000"
    elif edit == "a file left out":
        del manifest["files"]["config.json"]
    elif edit == "the encoder":
        manifest["encoder"]["fingerprint"] = manifest["encoder"]["fingerprint"].replace("squeeze224", "squeeze288")


MANIFEST_EDITS = {
    "a file's sha256": "vocab.json does not match its manifest",
    "the model id": "model_id 'captioner-000000000000' is not that of",
    "a file left out": "does not list the sha256 of",
    "the encoder": "was exported from encoder",
    "not JSON": "manifest.json is not valid JSON",
}


@pytest.mark.parametrize("edit, message", MANIFEST_EDITS.items(), ids=MANIFEST_EDITS.keys())
def test_an_edited_manifest_stops_the_start(tmp_path, edit, message):
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    if edit == "not JSON":
        text = (copy / MANIFEST_FILE).read_text()
        (copy / MANIFEST_FILE).write_text(text.replace('"files"', '"files', 1))
    else:
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        edit_manifest(manifest, edit)
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    assert_start_refused(copy, message)


@pytest.mark.parametrize("name", ["vocab.json", "config.json"])  # decoder.safetensors: test_service.py
def test_a_changed_byte_in_any_weights_file_stops_the_start(tmp_path, name):
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    assert_start_refused(copy, f"{copy / name} does not match its manifest")


def assert_start_refused(weights: Path, message: str) -> None:
    with running_server(wait_ready=False, weights_dir=weights) as server:
        assert server.process.wait(timeout=120) != 0
        output = server.output()
    [line] = [line for line in output.splitlines() if "refusing to start" in line]
    assert message in line
    assert "Traceback" not in output
