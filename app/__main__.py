"""Serve the app: `python -m app [--host HOST] [--port PORT]`, or `captioner serve` (app.cli).

uvicorn, with what the service needs of it: request heads under a deadline (app.protocol), and on
SIGTERM a clean stop: /readyz answers 503 at once while requests are still taken for
CAPTIONER_DRAIN_DELAY_S (load balancers notice and stop sending), then uvicorn stops taking
connections and answers every request already in, and the process exits 0 instead of dying by the
signal uvicorn re-raises. Ctrl-C (SIGINT) skips the delay.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

import uvicorn
from starlette.datastructures import State

from runtime import cli


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app_state: State, drain_delay_s: float):
        super().__init__(config)
        self.app_state = app_state
        self.drain_delay_s = drain_delay_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.app_state.draining:
            return super().handle_exit(sig, frame)
        self.app_state.draining = True  # readyz: 503 from now on
        threading.Timer(self.drain_delay_s, super().handle_exit, (sig, frame)).start()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's flags: python -m app's and captioner serve's."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")


def serve(args: argparse.Namespace) -> None:
    from app.main import app  # builds the app: after the arguments, so that --help answers at once
    from app.protocol import with_header_deadline

    settings = app.state.settings
    config = uvicorn.Config(app, host=args.host, port=args.port, http=with_header_deadline(settings.header_timeout_s),
                            timeout_keep_alive=5, access_log=False)  # middleware.AccessLog writes one JSON line instead
    # uvicorn drains first, then raises SIGTERM again with the handler it found: this one.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    DrainingServer(config, app.state, settings.drain_delay_s).run()


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("app", __doc__)
    add_arguments(parser)
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
