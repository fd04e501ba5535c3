"""Serve the app: `python -m app [--host HOST] [--port PORT]`.

uvicorn, with what the service needs of it: request heads under a deadline (app.protocol), and on
SIGTERM a clean stop: uvicorn stops taking connections, answers every request already in, and
then, instead of dying by the signal it re-raises, the process exits 0.
"""
from __future__ import annotations

import signal
import sys

import uvicorn

from model import cli


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("app", __doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    args = parser.parse_args(argv)
    # uvicorn drains first, then raises SIGTERM again with the handler it found: this one.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run("app.main:app", host=args.host, port=args.port, http="app.protocol:HeaderDeadline", timeout_keep_alive=5)


if __name__ == "__main__":
    main()
