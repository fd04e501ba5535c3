"""The service over real HTTP: uvicorn in a subprocess, httpx as the client, images made by PIL."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from urllib.parse import urlparse

import httpx
import pytest
import torch
from PIL import Image

from app.local_server import free_port
from app.settings import Settings
from model.encoder import build_encoder
from runtime.captioner import Captioner
from runtime.images import decode_image
from runtime.weights import CNN_GRAPH_FILE, CNN_TENSORS_FILE
from tests.conftest import ROOT, WEIGHTS, encoded, running_server, scene


def post(url, data: bytes, filename="image", content_type="application/octet-stream", timeout=60, **params):
    return httpx.post(f"{url}/v1/captions", params=params, files={"image": (filename, data, content_type)}, timeout=timeout)


def error_detail(response: httpx.Response, status: int) -> str:
    """The one error shape: {"detail": "a sentence"}, plus "errors" (each failed field) for invalid requests."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) <= {"detail", "errors"}
    for error in body.get("errors", []):
        assert set(error) == {"loc", "msg", "type"} and all(isinstance(part, str) for part in error["loc"])
    return body["detail"]


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with almost no pixel data behind it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt, content_type", [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_jpeg_and_png_get_captions(server, fmt, content_type):
    response = post(server, encoded(scene(), fmt), content_type=content_type, beam_size=4, num_captions=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"captions", "tags", "low_confidence", "model", "elapsed_ms"}
    assert body["model"].startswith("captioner-")
    texts = [c["text"] for c in body["captions"]]
    log_probs = [c["log_prob"] for c in body["captions"]]
    assert len(texts) == 3 == len(set(texts)) and all(texts)
    assert all(lp < 0 for lp in log_probs)
    assert body["elapsed_ms"] > 0


def test_captions_come_best_first_as_the_served_decoding_ranks_them(server):
    """The shipped decoding reranks the beams by consensus: the order is the captioner's, not log p's."""
    image = encoded(scene(), "PNG")
    body = post(server, image, num_captions=3).json()
    captioner = Captioner.load(WEIGHTS)
    assert captioner.decoding.consensus_weight > 0
    [expected] = captioner.caption([decode_image(image, Settings().max_pixels)], num_captions=3)
    assert [(c["text"], round(c["log_prob"], 2)) for c in body["captions"]] == [(t, round(lp, 2)) for t, lp in expected]


def test_every_caption_has_a_calibrated_confidence(server):
    threshold = httpx.get(f"{server}/v1/model").json()["confidence"]["threshold"]
    body = post(server, encoded(scene(), "PNG"), num_captions=3).json()
    confidences = [caption["confidence"] for caption in body["captions"]]
    assert len(confidences) == 3 and all(0 <= c <= 1 for c in confidences)
    assert body["low_confidence"] == (confidences[0] < threshold)


@pytest.mark.parametrize("image", [Image.new("RGB", (320, 240), (128, 128, 128)), Image.new("RGB", (320, 240), "white")],
                         ids=["grey", "white"])
def test_a_blank_frame_is_flagged_low_confidence(server, image):
    body = post(server, encoded(image, "PNG")).json()
    assert body["low_confidence"] is True and body["captions"][0]["confidence"] < 0.5


def test_defaults_give_one_caption(server):
    body = post(server, encoded(scene(), "PNG")).json()
    assert len(body["captions"]) == 1 and len(body["captions"][0]["text"].split()) <= 20


@pytest.mark.parametrize("fmt, options", [("WEBP", {}), ("BMP", {}), ("GIF", {}), ("JPEG", {"quality": 30})])
def test_other_formats(server, fmt, options):
    assert post(server, encoded(scene(colour="blue"), fmt, **options)).status_code == 200


def test_animated_gif_uses_its_first_frame(server):
    frames = [scene(colour="red"), scene(colour="blue")]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert post(server, data).status_code == 200


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (120, 60), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    data = encoded(image, "JPEG", exif=exif)
    assert decode_image(data, 10**6).size == (60, 120)


def test_exif_rotated_jpeg_over_http(server):
    exif = Image.Exif()
    exif[0x0112] = 8
    assert post(server, encoded(scene(), "JPEG", exif=exif)).status_code == 200


def test_one_pixel_image(server):
    assert post(server, encoded(Image.new("RGB", (1, 1), "white"), "PNG")).status_code == 200


@pytest.mark.parametrize(
    "data, status, message",
    [
        (b"hello, this is plain text", 415, "not an image"),
        (b"", 400, "empty"),
        (encoded(scene(), "JPEG")[:600], 400, "corrupt or truncated"),
        (encoded(scene(), "PNG")[:-30], 400, "corrupt or truncated"),
        (png_declaring(20000, 20000), 413, "more than 40000000 pixels"),
    ],
    ids=["text", "empty", "truncated-jpeg", "truncated-png", "pixel-bomb"],
)
def test_bad_images_get_clear_errors(server, data, status, message):
    assert message in error_detail(post(server, data), status)


@pytest.mark.parametrize(
    "params",
    [{"beam_size": 0}, {"beam_size": 11}, {"max_length": 4}, {"max_length": 51}, {"num_captions": 0},
     {"beam_size": 2, "num_captions": 3}, {"beam_size": "three"}, {"guided": "maybe"}],
)
def test_bad_parameters_get_422(server, params):
    response = post(server, encoded(scene(), "PNG"), **params)
    detail = error_detail(response, 422)
    assert ("num_captions" if "num_captions" in params and "beam_size" in params else next(iter(params))) in detail
    if "errors" in response.json():  # FastAPI's own validation: the field's place, in the list and in the sentence
        assert response.json()["errors"][0]["loc"] == ["query", next(iter(params))]


@pytest.mark.parametrize(
    "files, message",
    [
        ({"photo": ("x.png", b"png")}, "unknown form field 'photo'"),
        ([("image", ("a.png", b"a")), ("image", ("b.png", b"b"))], "2 image fields: send one image per request"),
        ([("image", ("a.png", b"a")), ("caption", (None, "mine"))], "unknown form field 'caption'"),
    ],
    ids=["misspelt", "two-images", "extra-field"],
)
def test_a_form_with_other_fields_than_one_image_gets_422(server, files, message):
    response = httpx.post(f"{server}/v1/captions", files=files)
    assert message in error_detail(response, 422)


def test_missing_image_gets_422_naming_the_field(server):
    response = httpx.post(f"{server}/v1/captions", data={}, headers={"content-type": "multipart/form-data; boundary=x"},
                          content=b"--x--\r\n")
    detail = error_detail(response, 422)
    assert "image" in detail and response.json()["errors"][0]["loc"] == ["body", "image"]


def test_unknown_routes_and_methods_use_the_error_shape(server):
    assert error_detail(httpx.get(f"{server}/v2/captions"), 404) == "Not Found"
    assert error_detail(httpx.get(f"{server}/v1/captions"), 405) == "Method Not Allowed"


def test_openapi_describes_every_error_with_the_one_shape(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    error_responses = [(path, method, status, response) for path, operations in schema["paths"].items()
                       for method, operation in operations.items()
                       for status, response in operation["responses"].items() if status[0] in "45"]
    assert {status for path, _, status, _ in error_responses if path == "/v1/captions"} >= {"400", "413", "415", "422", "503"}
    for path, method, status, response in error_responses:
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (path, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {"detail", "errors"}


def send_raw(url: str, request: bytes, chunks=()) -> tuple[str, dict]:
    """Send a request head and body chunks over a plain socket; return the status line and the JSON body."""
    address = urlparse(url)
    reply = b""
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(request)
        for chunk in chunks:
            connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        while not re.search(rb"\r\n\r\n\{.*\}$", reply, re.S):  # the error bodies are one JSON object
            try:
                data = connection.recv(4096)
            except ConnectionResetError:  # the server closed with some of our body unread; what came is kept
                break
            if not data:
                break
            reply += data
    head, _, body = reply.decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], json.loads(body)


def test_huge_declared_body_is_refused_before_it_is_sent(server):
    """Content-Length of 100 MB: the answer comes without the server reading any of it."""
    started = time.time()
    status, body = send_raw(server, b"POST /v1/captions HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000000\r\n\r\n")
    assert status == "HTTP/1.1 413 Request Entity Too Large"
    assert body == {"detail": "request body over the limit of 10485760 bytes"}
    assert time.time() - started < 5


def test_errors_never_stop_the_service(server):
    for data in (b"junk", encoded(scene(), "JPEG")[:100], png_declaring(30000, 30000)):
        assert post(server, data).status_code in (400, 413, 415)
    assert post(server, encoded(scene(), "JPEG")).status_code == 200


def batch_sizes(url: str) -> tuple[float, float]:
    """(observations, observations of batch size 1) from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    count = float(re.search(r"^captioner_batch_size_count (\S+)", text, re.M).group(1))
    ones = float(re.search(r'^captioner_batch_size_bucket\{le="1.0"\} (\S+)', text, re.M).group(1))
    return count, ones


def test_fifty_concurrent_requests_are_batched(server):
    images = [encoded(scene(colour=c), "JPEG") for c in ("red", "blue", "green", "yellow", "purple")]

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            requests = [
                client.post(f"{server}/v1/captions", params={"beam_size": 1 + i % 3},
                            files={"image": ("x.jpg", images[i % 5], "image/jpeg")})
                for i in range(50)
            ]
            return await asyncio.gather(*requests)

    before_count, before_ones = batch_sizes(server)
    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 50
    count, ones = batch_sizes(server)
    assert count - before_count < 50  # fewer batches than requests
    assert count - before_count > ones - before_ones  # at least one batch held more than one image


def test_model_info(server):
    info = httpx.get(f"{server}/v1/model").json()
    assert info["encoder"]["name"] == "efficientnet-lite0"
    assert info["vocab_size"] > 4
    assert set(info["files_sha256"]) == {"decoder.safetensors", "vocab.json", "config.json", "reranker.safetensors", "tags.json",
                                         "cnn.onnx", "cnn.safetensors"}
    # The shipped weights: trained on Flickr8k's train split, scored on its validation split.
    assert info["data"]["name"] == "Flickr8k" and info["data"]["splits"]["train"]["images"] == 6000
    assert info["scores"]["val"]["CIDEr"] > 0.4 and "test" not in info["scores"]
    assert info["decoding"]["beam_size"] >= 1
    assert info["decoding"]["consensus_weight"] > 0 and info["consensus"]["fitted_on"] == "6000 Flickr8k training photos"
    assert info["decoding"]["guided"] is True and 0 < info["decoding"]["tag_threshold"] < 1
    assert 1 <= info["decoding"]["state_beam_size"] < info["decoding"]["beam_size"]
    tags = info["tags"]
    assert tags["available"] is True and "WordNet 3.0" in tags["map"]
    assert tags["calibration"]["slope"] > 0 and "training photos" in tags["fitted_on"]
    assert tags["held_out"]["Flickr8k"]["expected_calibration_error"] < 0.1


@pytest.mark.parametrize("photo, word", [("cat.jpg", "cat"), ("coffee.jpg", "coffee"), ("cameraman.jpg", "tripod")])
def test_a_photo_gets_its_tags_and_a_caption_that_says_the_first(server, photo, word):
    data = (ROOT / "docs" / "examples" / photo).read_bytes()
    guided = post(server, data, content_type="image/jpeg").json()
    first = guided["tags"][0]
    assert first["word"] == word and first["probability"] >= 0.5 and first["class_name"]
    assert word in guided["captions"][0]["text"].split()
    assert 0 <= guided["captions"][0]["confidence"] <= 1
    plain = post(server, data, content_type="image/jpeg", guided="false").json()
    assert plain["tags"] == guided["tags"]  # tags come either way; only the caption changes
    # a guided search keeps fewer beams per state (decoding.state_beam_size), never fewer than the captions asked
    asked = post(server, data, content_type="image/jpeg", num_captions=5).json()["captions"]
    assert len(asked) == 5 and all(word in caption["text"].split() for caption in asked)


def test_a_photo_without_confident_tags_gets_a_plain_caption_and_no_tags(server):
    data = encoded(Image.new("RGB", (320, 240), (128, 128, 128)), "PNG")
    guided, plain = (post(server, data, guided=value).json() for value in ("true", "false"))
    assert guided["tags"] == [] == plain["tags"]
    assert guided["captions"] == plain["captions"]


def test_health_metrics_docs_and_page(server):
    assert httpx.get(f"{server}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{server}/readyz").status_code == 200
    metrics = httpx.get(f"{server}/metrics").text
    for name in ("captioner_requests_total", "captioner_request_seconds_bucket", "captioner_batch_size_bucket",
                 "captioner_queue_depth"):
        assert name in metrics
    assert httpx.get(f"{server}/openapi.json").json()["paths"]["/v1/captions"]["post"]
    assert httpx.get(f"{server}/docs").status_code == 200
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and 'type="file"' in page.text
    assert httpx.get(f"{server}/no-such-page").status_code == 404


def test_one_json_log_line_per_request(served):
    post(served.url, encoded(scene(), "PNG"))
    post(served.url, b"not an image")
    time.sleep(0.2)  # the log line is written after the response
    lines = [json.loads(line) for line in served.output().splitlines() if line.startswith("{")]
    captions = [line for line in lines if line["route"] == "/v1/captions"]
    assert {"route": "/v1/captions", "method": "POST", "status": 200}.items() <= captions[-2].items()
    assert captions[-2]["batch_size"] >= 1 and captions[-2]["ms"] > 0
    assert captions[-1]["status"] == 415 and "batch_size" not in captions[-1]
    assert '"POST /v1/captions HTTP/1.1"' not in served.output()  # no uvicorn access line beside it


@pytest.fixture(scope="module")
def limited_start():
    """One server for the tests that need small limits, and the readyz answers polled from its very start."""
    with running_server(wait_ready=False, max_upload_bytes=50_000, queue_limit=2, max_batch_size=1,
                        max_batch_wait_ms=0) as server:
        readyz_seen = []
        deadline = time.time() + 120
        while time.time() < deadline and 200 not in readyz_seen:
            try:
                readyz_seen.append(httpx.get(f"{server.url}/readyz", timeout=1).status_code)
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.02)
        yield server, readyz_seen


@pytest.fixture
def limited(limited_start):
    return limited_start[0]


def test_readyz_is_503_until_the_model_is_warm(limited_start):
    _, readyz_seen = limited_start
    assert readyz_seen[0] == 503 and readyz_seen[-1] == 200
    assert set(readyz_seen) == {503, 200}


def test_streamed_body_over_the_limit_is_cut_off(limited):
    """No Content-Length (chunked): the bytes are counted as they stream in, and the 413 comes while
    the client is still sending (the body is never finished here)."""
    head = (b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
    status, body = send_raw(limited.url, head, [part] + [b"\0" * 10_000] * 6)
    assert status == "HTTP/1.1 413 Request Entity Too Large"
    assert body == {"detail": "request body over the limit of 50000 bytes"}
    assert post(limited.url, encoded(scene(), "JPEG")).status_code == 200  # and it keeps serving


def test_overload_gets_503_with_retry_after_then_recovers(limited):
    data = encoded(scene(), "JPEG")

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(f"{limited.url}/v1/captions", params={"beam_size": 10, "max_length": 50},
                            files={"image": ("x.jpg", data, "image/jpeg")})
                for _ in range(24)
            ])

    responses = asyncio.run(burst())
    assert {r.status_code for r in responses} == {200, 503}
    refused = [r for r in responses if r.status_code == 503]
    assert all(r.headers["Retry-After"] == "1" and "retry" in r.json()["detail"] for r in refused)
    assert post(limited.url, data).status_code == 200


def test_timeout_gets_504_and_the_service_goes_on():
    with running_server(request_timeout_s=0.001) as server:
        for _ in range(2):  # the worker goes on after a request it abandoned
            response = post(server.url, encoded(scene(), "JPEG"), beam_size=10, max_length=50)
            assert response.status_code == 504
            assert response.json() == {"detail": "no caption within 0.001 s"}
        assert httpx.get(f"{server.url}/v1/model").status_code == 200


def test_weights_without_a_tag_map_serve_plain_captions_and_say_so(tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    (copy / "tags.json").unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["tags.json"], manifest["tags"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    data = (ROOT / "docs" / "examples" / "cat.jpg").read_bytes()
    with running_server(weights_dir=copy) as server:
        body = post(server.url, data, content_type="image/jpeg").json()
        info = httpx.get(f"{server.url}/v1/model").json()
        [line] = [line for line in server.output().splitlines() if "tags: none" in line]
    assert body["tags"] == [] and "cat" not in body["captions"][0]["text"].split()
    assert info["tags"]["available"] is False and "no tag map" in info["tags"]["reason"]
    assert "python -m model.tag_map" in line


@pytest.mark.parametrize("damage, name", [("flip", "decoder.safetensors"), ("delete", "decoder.safetensors"),
                                          ("flip", "tags.json"), ("flip", "cnn.onnx")])
def test_tampered_or_missing_weights_stop_the_start(tmp_path, damage, name):
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    target = copy / name
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with running_server(wait_ready=False, weights_dir=copy) as server:
        assert server.process.wait(timeout=120) != 0
        [message] = [line for line in server.output().splitlines() if "refusing to start" in line]
        assert "Traceback" not in server.output()
    assert str(target) in message
    assert ("does not match its manifest" if damage == "flip" else "is missing") in message


def test_onnx_runtime_serves_the_eager_cnns_caption_and_the_log_says_which_runs(served):
    """CAPTIONER_ENCODER_RUNTIME=onnxruntime: ONNX Runtime for the exported CNN instead of OpenVINO, with
    the features of the eager PyTorch network it was exported from (on the same pixels), and so its captions."""
    photo = encoded(Image.open(WEIGHTS.parent / "docs" / "examples" / "cameraman.jpg"), "JPEG")
    captioner = Captioner.load(WEIGHTS, "cpu")
    pixels = captioner.preprocess(decode_image(photo, Settings().max_pixels))[None]  # [1, 3, 224, 224], as the service makes them
    features = build_encoder(runtime="eager").encode_pixels(torch.from_numpy(pixels)).numpy()
    eager = captioner.describe(features)
    [eager_confidences] = captioner.confidences(features, eager)
    with running_server(encoder_runtime="onnxruntime") as onnx:
        onnx_captions = post(onnx.url, photo).json()["captions"]
        assert "CNN through onnxruntime" in onnx.output()
    assert [c["text"] for c in onnx_captions] == [text for text, _ in eager[0]]
    # The two runtimes' features are about 4e-6 apart: the log-probabilities and the confidence (which reads the
    # reranker's agreement, which reads v itself) about 1e-6.
    assert [c["log_prob"] for c in onnx_captions] == pytest.approx([log_prob for _, log_prob in eager[0]], abs=1e-4)
    assert [c["confidence"] for c in onnx_captions] == pytest.approx(eager_confidences, abs=1e-4)
    assert "CNN through openvino-" in served.output()


# Run in the server's own process: python -m app, with a thread that captions one photo over HTTP, reports
# what the process imported, then stops the server as a SIGTERM does.
SERVE_AND_REPORT = """
import json, os, runpy, signal, sys, threading
import httpx
from app.local_server import wait_for_readyz

port, photo = sys.argv[1], sys.argv[2]

def client():
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_readyz(url, lambda: None)
        with open(photo, "rb") as file:
            response = httpx.post(f"{url}/v1/captions", files={"image": ("photo.png", file.read(), "image/png")}, timeout=60)
        print(json.dumps({"status": response.status_code, "body": response.json(), "torch": "torch" in sys.modules,
                          "runtime": "runtime.captioner" in sys.modules}), flush=True)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=client, daemon=True).start()
sys.argv = ["app", "--host", "127.0.0.1", "--port", port]
runpy.run_module("app", run_name="__main__", alter_sys=True)
"""


def test_the_service_captions_without_importing_torch(tmp_path):
    """The CPU service runs on the exported CNN and the decoder's tensors alone: torch, installed here for
    training, is never imported by the server's process, before or after it captions a photo."""
    scene(colour="blue").save(tmp_path / "photo.png")
    env = {**os.environ, "CAPTIONER_WEIGHTS_DIR": str(WEIGHTS), "CAPTIONER_DRAIN_DELAY_S": "0"}
    result = subprocess.run([sys.executable, "-c", SERVE_AND_REPORT, str(free_port()), str(tmp_path / "photo.png")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    [report] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert report["status"] == 200 and report["body"]["captions"][0]["text"], report
    assert report["runtime"] and report["torch"] is False
    assert "ready: captioner-" in result.stderr


def test_weights_saved_before_the_export_stop_the_start_naming_the_command(tmp_path):
    """A folder from before the runtime served without torch (no cnn.onnx, no "export" section): one log
    line that says how to convert it, and a non-zero exit within seconds, not a traceback."""
    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy, ignore=shutil.ignore_patterns(CNN_GRAPH_FILE, CNN_TENSORS_FILE))
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["export"], manifest["files"][CNN_GRAPH_FILE], manifest["files"][CNN_TENSORS_FILE]
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    started = time.time()
    with running_server(wait_ready=False, weights_dir=copy) as server:
        assert server.process.wait(timeout=60) != 0
        seconds = time.time() - started
        output = server.output()
    assert seconds < 30, output
    [line] = [line for line in output.splitlines() if "model.export" in line]
    assert line.startswith("refusing to start: ") and f"{copy} holds weights saved before the runtime served without torch" in line
    assert line.endswith(f"python -m model.export --weights {copy}")
    assert len([line for line in output.splitlines() if str(copy) in line]) == 1 and "Traceback" not in output


def test_metrics_file_an_upload_refused_for_its_size_under_its_route(server):
    """BodySizeLimit answers 413 before the router has run: /metrics still counts it under /v1/captions, not "unmatched"."""
    def refused(route: str) -> float:
        text = httpx.get(f"{server}/metrics").text
        found = re.search(rf'^captioner_requests_total\{{route="{route}",status="413"\}} (\S+)', text, re.M)
        return float(found.group(1)) if found else 0.0

    before = refused("/v1/captions"), refused("unmatched")
    status, _ = send_raw(server, b"POST /v1/captions HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 20000000\r\n\r\n")
    assert status == "HTTP/1.1 413 Request Entity Too Large"
    deadline = time.time() + 5  # the count is taken just after the answer is sent
    while refused("/v1/captions") == before[0] and time.time() < deadline:
        time.sleep(0.05)
    assert (refused("/v1/captions"), refused("unmatched")) == (before[0] + 1, before[1])
