"""Throughput under concurrent clients, against the naive baseline.

    python -m bench.throughput [--clients 1 4 8 16] [--requests 200] [--beam-size 3]

Starts the real server (python -m app on a free port). For each level, that many clients
each send the same 640x480 JPEG again as soon as their previous answer arrives, until --requests
have been sent between them (after --warmup untimed ones at the same level, so that every batch
size the level produces has run once). Per level: images/s, latency p50/p99, the mean batch size
the server formed (captioner_batch_size sum/count between the level's start and end on /metrics)
and the failed requests.

The naive baseline (bench/naive.py, in torch) is single-stream by construction: its throughput is
images/s of decoding and calling naive_caption in a loop, --naive-images times, in this process
after the server has stopped, on the device the server picks. Ratio per level = ours / naive.

The clients run in this process, on the same CPUs as the server: on a small machine their HTTP
work is part of what is measured. Server settings come from CAPTIONER_* environment variables.
"""
from __future__ import annotations

import sys

from app.local_server import running_server
from app.settings import Settings
from bench.common import (
    mean_between, model_summary, parser, positive, print_table, server_settings, serving_beam_size, test_photo,
    timed_load, write_json,
)
from runtime.captioner import resolve_device


def main(argv: list[str] | None = None) -> int:
    p = parser("throughput", __doc__, weights=True)
    p.add_argument("--clients", type=positive, nargs="+", default=[1, 4, 8, 16], help="concurrency levels (default 1 4 8 16)")
    p.add_argument("--requests", type=positive, default=200, help="timed requests per level, all clients together (default 200)")
    p.add_argument("--warmup", type=positive, default=20, help="untimed requests before each level (default 20)")
    p.add_argument("--naive-images", type=positive, default=50, help="images through the naive loop (default 50)")
    args = p.parse_args(argv)
    args.beam_size = args.beam_size or serving_beam_size(args.weights)
    jpeg = test_photo(args)

    levels = []
    with running_server(weights_dir=args.weights.resolve()) as server:
        for clients in args.clients:
            print(f"{clients} clients: {args.warmup} + {args.requests} requests ...", flush=True)
            timed = timed_load(server, jpeg, clients, args.warmup, args.requests, args.beam_size)
            levels.append({
                "clients": clients,
                "images_per_s": round(timed.load.images_per_s, 2),
                **timed.load.percentiles_ms(),
                "mean_batch_size": round(mean_between(timed.before, timed.after, "captioner_batch_size"), 2),
                "server_cpu_ms_per_request": timed.server_cpu_ms_per_request,
                "errors": timed.load.errors,
            })

    print(f"naive: {args.naive_images} images in a loop ...", flush=True)
    from bench.naive import naive_captioner, naive_seconds  # torch, only now that the server has stopped

    device = resolve_device(Settings().device)  # the server's
    naive = naive_captioner(args.weights, device)
    naive_images_per_s = round(args.naive_images / sum(naive_seconds(naive, jpeg, args.beam_size, args.naive_images)), 2)
    for level in levels:
        level["ratio_vs_naive"] = round(level["images_per_s"] / naive_images_per_s, 2)

    print_table(
        f"{args.requests} requests per level, one 640x480 JPEG, beam {args.beam_size}, {device}; "
        f"naive: {naive_images_per_s:.1f} images/s",
        ["clients", "images/s", "p50 ms", "p99 ms", "mean batch", "server CPU ms/request", "errors", "ours/naive (x)"],
        [[level["clients"], level["images_per_s"], level["p50_ms"], level["p99_ms"], level["mean_batch_size"],
          level["server_cpu_ms_per_request"], level["errors"], level["ratio_vs_naive"]] for level in levels],
    )
    write_json(args.json, {
        "benchmark": "throughput",
        "beam_size": args.beam_size,
        "device": device,
        "model": model_summary(args.weights),
        "requests_per_level": args.requests,
        "server_settings": server_settings(),
        "levels": levels,
        "naive_images_per_s": naive_images_per_s,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
