"""Single-image latency, end to end over HTTP, split by stage, against the naive baseline.

    python -m bench.latency [--requests 200] [--repeats 100] [--beam-size 3]

1. Starts the real server (python -m app on a free port) and sends one 640x480 JPEG at a
   time from one client, so batching cannot help: p50/p90/p99 over --requests after --warmup.
   The server's own CNN and beam-search histograms (/metrics) give its view of the same requests.
2. In this process, without torch as the server, times each stage the service runs, on the same
   image, --repeats times: decode (runtime.images.decode_image), preprocess (Captioner.preprocess:
   resize and normalise, in the server on the thread that decoded the photo), CNN
   (Captioner.encode_pixels), beam search (Captioner.describe), serialisation (the pydantic response
   to JSON). What the end-to-end p50 has beyond the sum of the stage p50s is HTTP, multipart
   parsing, the batcher's wait for company, and thread hand-offs.
3. The naive baseline (bench/naive.py: one image, eager fp32 NCHW CNN, a Python loop over the beams,
   in torch) on the same image after the same decode, --repeats times. Speed-up = naive / ours.

Server settings come from CAPTIONER_* environment variables, e.g. CAPTIONER_MAX_BATCH_WAIT_MS=0.
"""
from __future__ import annotations

import sys

from app.local_server import running_server
from app.routes import caption_response
from bench.common import (
    MAX_PIXELS, in_process_captioner, mean_between, model_summary, parser, percentiles_ms, positive, print_table,
    repeat_timed, server_settings, serving_beam_size, test_photo, timed_load, write_json,
)
from runtime.images import decode_image

ROUTE = "/v1/captions"


def main(argv: list[str] | None = None) -> int:
    p = parser("latency", __doc__, weights=True)
    p.add_argument("--requests", type=positive, default=200, help="timed HTTP requests (default 200)")
    p.add_argument("--warmup", type=positive, default=10, help="untimed HTTP requests first (default 10)")
    p.add_argument("--repeats", type=positive, default=100, help="in-process timings of each stage and of naive (default 100)")
    args = p.parse_args(argv)
    args.beam_size = args.beam_size or serving_beam_size(args.weights)
    jpeg = test_photo(args)

    print(f"server: {args.warmup} + {args.requests} requests, one at a time ...", flush=True)
    with running_server(weights_dir=args.weights.resolve()) as server:
        timed = timed_load(server, jpeg, 1, args.warmup, args.requests, args.beam_size)
    server_cpu_ms = timed.server_cpu_ms_per_request
    end_to_end = timed.load.percentiles_ms()
    server_mean_ms = {
        stage: round(1000 * mean_between(timed.before, timed.after, key), 2)
        for stage, key in [("request", f"captioner_request_seconds:{ROUTE}"), ("cnn", "captioner_stage_seconds:cnn"),
                           ("beam_search", "captioner_stage_seconds:beam_search")]
    }

    print(f"in process: each stage and the naive baseline, {args.repeats} times ...", flush=True)
    captioner = in_process_captioner(args.weights)
    image = decode_image(jpeg, MAX_PIXELS)
    pixels = captioner.preprocess(image)[None]  # [1, 3, size, size]
    features = captioner.encode_pixels(pixels)
    decoding = captioner.decoding.but(beam_size=args.beam_size)
    captions = captioner.describe(features, decoding)
    confidences = (captioner.confidences(features, captions) or [None])[0]
    tags = captioner.tags(features, decoding)[0]

    def serialise() -> str:  # what the route builds, and the JSON it becomes
        return caption_response(captioner, captions[0], confidences, tags, elapsed_ms=1.0).model_dump_json()

    stages = {
        "decode": percentiles_ms(repeat_timed(lambda: decode_image(jpeg, MAX_PIXELS), args.repeats)),
        "preprocess": percentiles_ms(repeat_timed(lambda: captioner.preprocess(image), args.repeats)),
        "cnn": percentiles_ms(repeat_timed(lambda: captioner.encode_pixels(pixels), args.repeats)),
        "beam_search": percentiles_ms(repeat_timed(lambda: captioner.describe(features, decoding), args.repeats)),
        "serialisation": percentiles_ms(repeat_timed(serialise, args.repeats)),
    }
    other_p50_ms = round(end_to_end["p50_ms"] - sum(s["p50_ms"] for s in stages.values()), 2)
    from bench.naive import naive_captioner, naive_seconds  # torch, only now that the service's path is timed

    naive = percentiles_ms(naive_seconds(naive_captioner(args.weights, captioner.device), jpeg, args.beam_size, args.repeats))
    speedup = {q: round(naive[f"{q}_ms"] / end_to_end[f"{q}_ms"], 2) for q in ("p50", "p90", "p99")}

    quantiles = ("p50_ms", "p90_ms", "p99_ms")
    print_table(
        f"one {image.width}x{image.height} JPEG ({len(jpeg) // 1024} KiB), beam {args.beam_size}, "
        f"{captioner.device}, ms (server column: its /metrics means over the same requests)",
        ["", "p50", "p90", "p99", "server"],
        [
            ["ours, end to end over HTTP", *(end_to_end[q] for q in quantiles), server_mean_ms["request"]],
            ["  decode", *(stages["decode"][q] for q in quantiles), ""],
            ["  preprocess (resize, normalise)", *(stages["preprocess"][q] for q in quantiles), ""],
            ["  CNN", *(stages["cnn"][q] for q in quantiles), server_mean_ms["cnn"]],
            ["  beam search", *(stages["beam_search"][q] for q in quantiles), server_mean_ms["beam_search"]],
            ["  serialisation", *(stages["serialisation"][q] for q in quantiles), ""],
            ["  HTTP, multipart, batcher wait (rest of p50)", other_p50_ms, "", "", ""],
            ["server CPU per request, all its threads", "", "", "", server_cpu_ms],
            ["naive: decode + naive_caption", *(naive[q] for q in quantiles), ""],
            ["speed-up, naive / ours (x)", *speedup.values(), ""],
        ],
    )
    if server_mean_ms["cnn"] > 1.25 * stages["cnn"]["p50_ms"]:  # the stages ran slower in the server than here
        print(f"\nnote: the server's CNN averaged {server_mean_ms['cnn']} ms, {stages['cnn']['p50_ms']} ms here: "
              "the rest of p50 includes that difference")
    if timed.load.errors:
        print(f"\n{timed.load.errors} of {args.requests} requests failed")
    write_json(args.json, {
        "benchmark": "latency",
        "image": {"width": image.width, "height": image.height, "jpeg_bytes": len(jpeg)},
        "beam_size": args.beam_size,
        "device": captioner.device,
        "model": model_summary(args.weights),
        "requests": args.requests,
        "repeats": args.repeats,
        "errors": timed.load.errors,
        "server_settings": server_settings(),
        "end_to_end": end_to_end,
        "server_mean_ms": server_mean_ms,
        "server_cpu_ms_per_request": server_cpu_ms,
        "stages": stages,
        "other_p50_ms": other_p50_ms,
        "naive": naive,
        "speedup": speedup,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
