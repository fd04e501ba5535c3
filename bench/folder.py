"""Captioning a folder in process (captioner caption) against the service's 8-client throughput, in one run.

    python -m bench.folder [--photos 1000] [--clients 8] [--rounds 3] [--images ../shared/data/flickr8k/Images]

Three runs over the first --photos photos of --images (in name order), one after the other, each
round, --rounds rounds; the table gives each run's median round:
- in process: app.bulk.InProcess, what `captioner caption` runs: the service's inference step
  (app.batcher.infer) on batches of CAPTIONER_MAX_BATCH_SIZE, the photos read and decoded by
  CAPTIONER_DECODE_CONCURRENCY threads a batch ahead of the model;
- the real server (python -m app on a free port, idle during the in-process run) at --clients
  clients as bench.throughput drives it (bench.common.drive): each client sends the same photo,
  the folder's first, again as soon as its answer comes, --photos requests in all;
- the same server, sent the same photos as in process by `captioner caption --server URL
  --concurrency N` (app.bulk.Remote): photo for photo the same work, what a bulk job gets.
Untimed first: one batch in process, --clients * 5 requests to the server.

Per run: images/s, the mean batch the model ran, the CNN's and the beam search's time per photo
(the service's own histograms; in process, InProcess's), and the CPU time per photo of the
process that runs the model and of the clients (this process, beside the server). Every run
captions with the weights' own decoding, as the service does by default. Both the server and the
in-process model take the CAPTIONER_* settings of the environment.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from app.bulk import InProcess, Remote
from app.local_server import Server, running_server
from bench.common import (
    FLICKR8K, ROOT, cpu_seconds, drive, histogram_totals, model_summary, parser, positive, print_table, server_settings,
    serving_beam_size, write_json,
)

HISTOGRAMS = {"batch": ("captioner_batch_size", {}), "cnn": ("captioner_stage_seconds", {"stage": "cnn"}),
              "beam_search": ("captioner_stage_seconds", {"stage": "beam_search"})}
KEYS = {what: ":".join([name, *labels.values()]) for what, (name, labels) in HISTOGRAMS.items()}  # as histogram_totals names them


def main(argv: list[str] | None = None) -> int:
    p = parser("folder", __doc__, weights=False)
    p.add_argument("--weights", type=Path, default=ROOT / "weights", help="weights folder (default: weights)")
    p.add_argument("--images", type=Path, default=FLICKR8K / "Images", help="the photos (default: the shared Flickr8k's)")
    p.add_argument("--photos", type=positive, default=1000, help="photos captioned per run (default 1000)")
    p.add_argument("--clients", type=positive, default=8, help="clients of the service, requests at a time (default 8)")
    p.add_argument("--rounds", type=positive, default=3, help="rounds of the three runs, one after the other (default 3)")
    args = p.parse_args(argv)
    paths = sorted(args.images.glob("*.jpg"))[:args.photos]
    if len(paths) < args.photos:
        raise SystemExit(f"error: {len(paths)} .jpg photos in {args.images}, fewer than --photos {args.photos}")

    local = InProcess.load(args.weights)
    list(local.caption(paths[:local.batch_size]))  # untimed: the first full batch's allocations
    beam_size = serving_beam_size(args.weights)
    photo = paths[0].read_bytes()
    one_photo, remote = f"service, {args.clients} clients, one photo again", f"service, --server --concurrency {args.clients}"
    rounds: dict[str, list[dict]] = {"in process": [], one_photo: [], remote: []}
    with running_server(weights_dir=args.weights.resolve()) as server:
        drive(server.url, photo, args.clients, args.clients * 5, beam_size)  # untimed: every batch size once
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number} of {args.rounds}: {len(paths)} photos in process, then through the service ...",
                  flush=True)
            rounds["in process"].append(timed(lambda: errors(local.caption(paths)), lambda: in_process_totals(local), len(paths)))
            rounds[one_photo].append(timed(lambda: drive(server.url, photo, args.clients, len(paths), beam_size).errors,
                                           lambda: histogram_totals(server.url), len(paths), server))
            rounds[remote].append(timed(lambda: errors(Remote(server.url, args.clients).caption(paths)),
                                        lambda: histogram_totals(server.url), len(paths), server))

    runs = {name: sorted(each, key=lambda run: run["images_per_s"])[len(each) // 2] for name, each in rounds.items()}  # medians
    fastest = max(runs, key=lambda name: runs[name]["images_per_s"])
    print_table(
        f"{len(paths)} photos of {args.images}, the weights' decoding (beam {beam_size}), {local.captioner.device}; "
        f"the median of {args.rounds} rounds; fastest: {fastest}",
        ["run", "images/s", "images/s each round", "mean batch", "CNN ms/image", "beam ms/image",
         "model process CPU ms/image", "clients CPU ms/image", "errors"],
        [[name, run["images_per_s"], " ".join(f"{each['images_per_s']:.1f}" for each in rounds[name]), run["mean_batch_size"],
          run["cnn_ms_per_image"], run["beam_search_ms_per_image"], run["model_process_cpu_ms_per_image"],
          run["clients_cpu_ms_per_image"], run["errors"]] for name, run in runs.items()],
    )
    write_json(args.json, {
        "benchmark": "folder",
        "photos": len(paths),
        "images": str(args.images),
        "clients": args.clients,
        "device": local.captioner.device,
        "model": model_summary(args.weights),
        "server_settings": server_settings(),
        "runs": runs,  # the median round of each
        "rounds": rounds,
    })
    return 0


def timed(work, totals, photos: int, server: Server | None = None) -> dict:
    """Run work() (it returns its errors), timed: images/s, and the model's own figures between the
    histogram totals() before and after. CPU time: the model's process (server's, else this one)
    and the clients' (this process, with a server)."""
    cpu = (lambda: (cpu_seconds(server), time.process_time())) if server else (lambda: (time.process_time(), 0.0))
    before, cpu_before = totals(), cpu()
    started = time.perf_counter()
    failed = work()
    seconds = time.perf_counter() - started
    after, cpu_after = totals(), cpu()
    (batch_sizes, batches), (cnn_s, _), (beam_s, _) = (
        [a - b for a, b in zip(after.get(key, (0, 0)), before.get(key, (0, 0)))] for key in KEYS.values())
    return {
        "images_per_s": round(photos / seconds, 2),
        "seconds": round(seconds, 2),
        "mean_batch_size": round(batch_sizes / batches, 2),
        "cnn_ms_per_image": round(1000 * cnn_s / photos, 2),
        "beam_search_ms_per_image": round(1000 * beam_s / photos, 2),
        "model_process_cpu_ms_per_image": round(1000 * (cpu_after[0] - cpu_before[0]) / photos, 1),
        "clients_cpu_ms_per_image": round(1000 * (cpu_after[1] - cpu_before[1]) / photos, 1),
        "errors": failed,
    }


def errors(captioned) -> int:
    """Run app.bulk's iterator of Captioned to the end: the photos that got no caption."""
    return sum(photo.error is not None for photo in captioned)


def in_process_totals(local: InProcess) -> dict[str, tuple[float, float]]:
    """bench.common.histogram_totals of InProcess's own metrics, the histograms timed reads."""
    registry = local.metrics.registry
    return {KEYS[what]: tuple(registry.get_sample_value(name + suffix, labels) or 0.0 for suffix in ("_sum", "_count"))
            for what, (name, labels) in HISTOGRAMS.items()}


if __name__ == "__main__":
    sys.exit(main())
