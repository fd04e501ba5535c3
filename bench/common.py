"""Shared by the benchmark scripts: a real server in a subprocess, the test photo, concurrent HTTP
clients, /metrics deltas, percentiles, timing loops, tables and the JSON file. No torch: the
service's CPU path runs without it, and so do the benchmarks that time it in process."""
from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import io
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image, ImageDraw, ImageFilter
from prometheus_client.parser import text_string_to_metric_families

from app.local_server import Server
from app.settings import Settings
from runtime.captioner import Captioner
from runtime.cnn import cpu_threads
from runtime.decoder import read_config
from runtime.options import Decoding
from runtime.weights import read_manifest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"  # the shared photos, where they are
MAX_PIXELS = Settings.model_fields["max_pixels"].default  # what the server checks uploads against


# ---------------------------------------------------------------- command line, output


def parser(name: str, description: str, *, weights: bool) -> argparse.ArgumentParser:
    """Where the JSON goes, and for the scripts that caption (weights=True) which weights they load
    and how many beams they search."""
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if weights:
        p.add_argument("--weights", type=Path, default=ROOT / "weights", help="weights folder (default: weights)")
        p.add_argument("--beam-size", type=positive,
                       help="beams searched per image (default: the weights' serving default, as the API)")
        p.add_argument("--photo", type=Path, help="send this photo instead of the synthetic 640x480 one, which has no "
                                                  "confident tag: docs/examples/cat.jpg has one, so its caption is guided")
    p.add_argument("--json", type=Path, default=RESULTS / f"{name}.json",
                   help=f"results file (default: bench/results/{name}.json)")
    return p


def serving_beam_size(weights: Path) -> int:
    """The beam size the service uses by default with these weights (their manifest's decoding)."""
    return Decoding(**read_manifest(weights).get("decoding", {})).beam_size


def positive(text: str) -> int:
    """argparse type: counts of requests, clients and images must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere platform.processor() says what it can
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    """The installed version of a package, without importing it; None where it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        **{package: version(package) for package in ("openvino", "onnxruntime", "torch")},
        "threads": cpu_threads(),  # what the CNN runtime and the decoder's graph run on (runtime.cnn.cpu_threads)
        "python": platform.python_version(),
        # at the end of the run: what else ran on these CPUs (a 1-minute figure near cpu_count means contention)
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    print(f"\nwrote {path}")


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    """A plain-text table: first column left-aligned, numbers right-aligned (one decimal; two below 1)."""
    cells = [[(f"{c:.2f}" if abs(c) < 1 else f"{c:.1f}") if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


# ---------------------------------------------------------------- timing


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 90, 99])
    return {"p50_ms": round(float(p50), 2), "p90_ms": round(float(p90), 2), "p99_ms": round(float(p99), 2)}


def repeat_timed(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls, after one untimed call (first-call allocations, lazy imports)."""
    call()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


# ---------------------------------------------------------------- the test photo


def test_photo(args: argparse.Namespace) -> bytes:
    """The photo a captioning bench sends: --photo's file as it is, else photo_jpeg()."""
    return args.photo.read_bytes() if args.photo else photo_jpeg()


def photo_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A camera-sized JPEG with what makes photos cost what they cost to decode: gradients, edges,
    texture (a flat synthetic scene would compress to almost nothing)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    sky = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 160)], axis=-1)
    noise = rng.normal(0, 18, (height, width, 3))
    image = Image.fromarray(np.clip(sky + noise, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 80)), int(rng.integers(0, height - 80))
        size = int(rng.integers(30, 160))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x0 + size, y0 + size * 3 // 4], fill=colour, outline=(0, 0, 0), width=2)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def load_photos(folder: Path, count: int | None = None) -> list[Image.Image]:
    """The first `count` (default: all) .jpg photos of folder, in name order, as RGB images."""
    paths = sorted(folder.glob("*.jpg"))[:count]
    if not paths:
        raise SystemExit(f"error: no .jpg photos in {folder}")
    photos = []
    for path in paths:
        try:
            with Image.open(path) as image:
                photos.append(image.convert("RGB"))
        except (OSError, ValueError) as error:  # PIL's errors for a file that is not a readable image
            raise SystemExit(f"error: cannot read {path}: {error}") from None
    return photos


# ---------------------------------------------------------------- the server


def server_settings() -> dict:
    """The settings that shape batching, as the server reads them from the same environment."""
    settings = Settings()
    return {"max_batch_size": settings.max_batch_size, "max_batch_wait_ms": settings.max_batch_wait_ms,
            "encoder_runtime": settings.encoder_runtime, "decoder_precision": settings.decoder_precision}


def cpu_seconds(server: Server) -> float:
    """CPU time the server process has used so far, all its threads (the CNN runtime's own included)."""
    times = psutil.Process(server.process.pid).cpu_times()
    return times.user + times.system


def in_process_captioner(weights: Path) -> Captioner:
    """The model as the server loads it, with the same CAPTIONER_* settings, for timings in this process."""
    settings = Settings()
    return Captioner.load(weights, settings.device, settings.decoder_precision, settings.encoder_runtime)


def model_summary(weights: Path) -> dict:
    """Which weights were timed: the decoder's size decides the beam search's cost."""
    config = read_config(weights)
    return {"id": read_manifest(weights)["model_id"], "vocab_size": config["vocab_size"], "hidden_dim": config["hidden_dim"]}


def histogram_totals(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of every histogram series on /metrics, keyed 'name' or 'name:label value'
    (e.g. 'captioner_batch_size', 'captioner_stage_seconds:cnn')."""
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.type != "histogram":
            continue
        for sample in family.samples:
            suffix = sample.name.removeprefix(family.name)
            if suffix in ("_sum", "_count"):
                key = ":".join([family.name, *sample.labels.values()])
                totals.setdefault(key, [0.0, 0.0])[suffix == "_count"] = sample.value
    return {key: (total, count) for key, (total, count) in totals.items()}


def mean_between(before: dict, after: dict, key: str) -> float | None:
    """Mean of the observations a histogram got between two histogram_totals snapshots."""
    total = after.get(key, (0.0, 0.0))[0] - before.get(key, (0.0, 0.0))[0]
    count = after.get(key, (0.0, 0.0))[1] - before.get(key, (0.0, 0.0))[1]
    return total / count if count else None


# ---------------------------------------------------------------- clients


@dataclass
class Load:
    """What `clients` concurrent clients saw while sending `requests` requests between them."""
    clients: int
    latencies_s: list[float] = field(default_factory=list)  # of the answered (200) requests
    errors: int = 0
    wall_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.latencies_s) / self.wall_s

    def percentiles_ms(self) -> dict[str, float]:
        if not self.latencies_s:
            raise SystemExit(f"error: all {self.errors} requests failed with {self.clients} clients")
        return percentiles_ms(self.latencies_s)


def drive(url: str, jpeg: bytes, clients: int, requests: int, beam_size: int = 3) -> Load:
    """Each client sends its next request as soon as its previous answer arrives (a closed loop), until
    `requests` have been sent in all; one keep-alive connection per client, as a real client would hold."""
    load = Load(clients)
    remaining = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for _ in remaining:  # a shared iterator: whichever client is free takes the next request
            started = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/captions", params={"beam_size": beam_size},
                                           files={"image": ("photo.jpg", jpeg, "image/jpeg")})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                load.latencies_s.append(time.perf_counter() - started)
            else:
                load.errors += 1

    async def main() -> None:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            started = time.perf_counter()
            await asyncio.gather(*(client(http) for _ in range(clients)))
            load.wall_s = time.perf_counter() - started

    asyncio.run(main())
    return load


@dataclass
class Timed:
    """A timed load on a server, and what the server itself counted meanwhile."""
    load: Load
    before: dict  # histogram_totals just before the timed requests
    after: dict  # and just after
    server_cpu_ms_per_request: float


def timed_load(server: Server, jpeg: bytes, clients: int, warmup: int, requests: int, beam_size: int) -> Timed:
    """`warmup` untimed requests, then `requests` timed ones (drive), with the server's histograms and
    CPU time read on either side of them."""
    drive(server.url, jpeg, clients, warmup, beam_size)
    before, cpu_before = histogram_totals(server.url), cpu_seconds(server)
    load = drive(server.url, jpeg, clients, requests, beam_size)
    after, cpu_after = histogram_totals(server.url), cpu_seconds(server)
    return Timed(load, before, after, round(1000 * (cpu_after - cpu_before) / requests, 1))
