"""Two or more versions of the service, timed alternately in one window: the A/B that a change's speed claim needs.

    git worktree add /tmp/old 789eff7
    python -m bench.ab --checkout /tmp/old --checkout . [--photo docs/examples/cat.jpg] [--rounds 3]

Each round starts each checkout's own server (python -m app run in that folder, so its code and
its weights/, by this Python) and times it as bench.latency and bench.throughput do: one client,
one request at a time, --requests of them (p50, p90), then --clients clients sharing
--load-requests (images/s, p50), each after --warmup untimed requests, and the server's CPU time
per request. The order of the checkouts turns each round, so that a slow minute of a shared
machine falls on each in turn. The table gives each checkout's median over the rounds and the
range; the spread between rounds is the machine's noise, against which a difference means
something. The beam size is each checkout's serving default.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from app.local_server import running_server
from bench.common import parser, positive, print_table, serving_beam_size, test_photo, timed_load, write_json


def time_checkout(checkout: Path, jpeg: bytes, args) -> dict:
    beam_size = serving_beam_size(checkout / "weights")
    with running_server(checkout=checkout) as server:
        one = timed_load(server, jpeg, 1, args.warmup, args.requests, beam_size).load
        many = timed_load(server, jpeg, args.clients, args.warmup, args.load_requests, beam_size)
    alone = one.percentiles_ms()
    return {"p50_ms": alone["p50_ms"], "p90_ms": alone["p90_ms"],
            "images_per_s": round(many.load.images_per_s, 2), "loaded_p50_ms": many.load.percentiles_ms()["p50_ms"],
            "server_cpu_ms_per_request": many.server_cpu_ms_per_request, "errors": one.errors + many.load.errors}


def main(argv: list[str] | None = None) -> int:
    p = parser("ab", __doc__, weights=False)
    p.add_argument("--checkout", type=Path, action="append", required=True, help="a version's folder (twice or more)")
    p.add_argument("--photo", type=Path, help="send this photo instead of the synthetic 640x480 one (no confident tag)")
    p.add_argument("--rounds", type=positive, default=3, help="rounds, each timing every checkout once (default 3)")
    p.add_argument("--requests", type=positive, default=150, help="one client's timed requests (default 150)")
    p.add_argument("--clients", type=positive, default=8, help="concurrent clients of the load (default 8)")
    p.add_argument("--load-requests", type=positive, default=300, help="the load's timed requests (default 300)")
    p.add_argument("--warmup", type=positive, default=20, help="untimed requests before each timing (default 20)")
    args = p.parse_args(argv)
    if len(args.checkout) < 2:
        p.error("give --checkout at least twice")
    checkouts = [folder.resolve() for folder in args.checkout]  # one folder twice: an A/A run, the noise alone
    jpeg = test_photo(args)
    runs: list[list[dict]] = [[] for _ in checkouts]
    for round_ in range(args.rounds):
        turn = round_ % len(checkouts)
        for index in [*range(turn, len(checkouts)), *range(turn)]:
            print(f"round {round_ + 1}: {checkouts[index]} ...", flush=True)
            runs[index].append(time_checkout(checkouts[index], jpeg, args))

    keys = ("p50_ms", "images_per_s", "loaded_p50_ms", "server_cpu_ms_per_request")
    rows = [[str(folder)] + [f"{statistics.median(r[key] for r in results):.1f} "
                             f"({min(r[key] for r in results):.1f}-{max(r[key] for r in results):.1f})" for key in keys]
            for folder, results in zip(checkouts, runs)]
    print_table(f"median (range) of {args.rounds} rounds; photo: {args.photo or 'synthetic 640x480'}",
                ["checkout", "p50 ms, 1 client", f"images/s, {args.clients} clients", "p50 ms loaded", "server CPU ms/request"],
                rows)
    write_json(args.json, {"photo": str(args.photo or "synthetic"), "rounds": args.rounds,
                           "checkouts": [{"folder": str(folder), "runs": results} for folder, results in zip(checkouts, runs)]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
