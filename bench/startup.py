"""Start-up: seconds from `python -m app` starting to its first /readyz 200, for each CNN runtime
the service serves with (CAPTIONER_ENCODER_RUNTIME, runtime.captioner.Captioner.load's runtime).

    python -m bench.startup [--repeats 3]

Ready means the weights verified, the exported CNN (cnn.onnx) compiled and checked against its
probe, the decoder's search built and checked, and a warm-up caption run. Each start is a new
process, as a container's is.
"""
from __future__ import annotations

import statistics
import sys
import time

from app.local_server import running_server
from bench.common import parser, positive, print_table, write_json

RUNTIMES = ("onnxruntime", "openvino")


def main(argv: list[str] | None = None) -> int:
    p = parser("startup", __doc__, weights=False)
    p.add_argument("--repeats", type=positive, default=3, help="starts per runtime (default 3)")
    args = p.parse_args(argv)
    seconds: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
    for _ in range(args.repeats):
        for runtime in RUNTIMES:  # alternated, so that a busy minute on a shared machine hits both
            started = time.perf_counter()
            with running_server(encoder_runtime=runtime) as server:
                seconds[runtime].append(time.perf_counter() - started)
                assert f"CNN through {runtime}" in server.output(), server.output()
    results = {runtime: {"median_s": round(statistics.median(times), 2), "runs_s": [round(t, 2) for t in times]}
               for runtime, times in seconds.items()}
    print_table("python -m app start to /readyz 200, seconds", ["CNN runtime", "median", "runs"],
                [[runtime, r["median_s"], ", ".join(map(str, r["runs_s"]))] for runtime, r in results.items()])
    write_json(args.json, {"startup": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
