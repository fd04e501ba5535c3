"""Soak test: many requests over loopback to a server this script starts; does its memory stay flat?

    python scripts/soak.py                        # 10,000 requests, 8 at a time
    python scripts/soak.py --requests 300 --baseline-after 100 --out /tmp/soak.json

The requests cycle through valid images of every accepted format and size, and a few bad
uploads (junk, truncated, a pixel bomb), so the error paths are soaked too. The server's RSS is
read once the first --baseline-after responses are in (allocator pools and caches are warm by
then) and again at the end. Passes (exit status 0) when no response was a 5xx, no request failed
at the transport level and the RSS at the end is within 10% of the baseline. Writes the numbers
as JSON to --out.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import struct
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import psutil
from PIL import Image, ImageDraw

from app.local_server import running_server

RESULTS = Path(__file__).resolve().parent / "results"
ALLOWED_GROWTH = 0.10


def scene(size: tuple[int, int], colour: str) -> Image.Image:
    image = Image.new("RGB", size, (235, 235, 235))
    w, h = size
    ImageDraw.Draw(image).ellipse([w // 3, h // 3, w // 3 + w // 4, h // 3 + h // 4], fill=colour)
    return image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def payloads() -> list[bytes]:
    """Fifteen good uploads to one bad one: mostly captioning, now and then an error path."""
    good = [
        encoded(scene(size, colour), fmt)
        for size, colour in (((320, 240), "red"), ((64, 64), "blue"), ((1024, 768), "green"))
        for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    ]
    bad = [b"junk, not an image", encoded(scene((320, 240), "red"), "PNG")[:-40], png_declaring(20_000, 20_000)]
    return [upload for error in bad for upload in (*good, error)]


async def soak(url: str, pid: int, requests: int, concurrency: int, baseline_after: int) -> dict:
    server = psutil.Process(pid)
    uploads = payloads()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    rss = {}
    next_request = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_request
        while next_request < requests:
            index, next_request = next_request, next_request + 1
            started = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/captions", files={"image": ("upload", uploads[index % len(uploads)])})
                statuses[str(response.status_code)] += 1
            except httpx.TransportError as error:
                statuses[type(error).__name__] += 1
            latencies.append(time.perf_counter() - started)
            if len(latencies) == baseline_after:
                rss["baseline"] = server.memory_info().rss

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    rss["end"] = server.memory_info().rss

    mib = 2**20
    growth = rss["end"] / rss["baseline"] - 1
    server_errors = sum(n for status, n in statuses.items() if status.startswith("5"))
    transport_errors = sum(n for status, n in statuses.items() if not status.isdigit())
    latencies.sort()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(seconds, 1),
        "requests_per_second": round(requests / seconds, 1),
        "latency_ms": {"p50": round(1000 * statistics.median(latencies), 1),
                       "p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)},
        "statuses": dict(sorted(statuses.items())),
        "server_errors": server_errors,
        "transport_errors": transport_errors,
        "rss_mib": {f"after_{baseline_after}": round(rss["baseline"] / mib, 1), "end": round(rss["end"] / mib, 1)},
        "rss_growth_percent": round(100 * growth, 2),
        "rss_within_10_percent": growth <= ALLOWED_GROWTH,
        "passed": server_errors == 0 and transport_errors == 0 and growth <= ALLOWED_GROWTH,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--baseline-after", type=int, default=1_000, help="read the baseline RSS after this many responses")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    if not 0 < args.baseline_after < args.requests:
        parser.error("--baseline-after must be between 0 and --requests")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")

    with running_server() as server:
        result = asyncio.run(soak(server.url, server.process.pid, args.requests, args.concurrency, args.baseline_after))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rss = result["rss_mib"]
    print(f"{args.requests} requests in {result['seconds']} s ({result['requests_per_second']}/s), statuses {result['statuses']}")
    print(f"server RSS {' -> '.join(f'{v} MiB ({k})' for k, v in rss.items())}: {result['rss_growth_percent']:+.2f}%, "
          f"{'within' if result['rss_within_10_percent'] else 'NOT within'} 10%")
    print(f"5xx responses: {result['server_errors']}, transport errors: {result['transport_errors']}")
    print(f"{'PASS' if result['passed'] else 'FAIL'}; written to {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
