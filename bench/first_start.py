"""A new user's first start: a fresh clone's `make serve`, timed to its first caption.

    python -m bench.first_start [--port 8200] [--keep]

Clones this checkout's HEAD into a temporary folder, runs `make serve` there (which makes .venv
and installs the base install from pip's index or cache), waits for /readyz and posts
docs/examples/cameraman.jpg. Prints the seconds from `make serve` to that caption, the size of the
new .venv, and the caption. pip's cache decides much of the time: a warm cache is the usual case
on a machine that has installed the project before.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from app.local_server import wait_for_readyz
from bench.common import ROOT

PHOTO = ROOT / "docs" / "examples" / "cameraman.jpg"
INSTALL_TIMEOUT_S = 900  # make serve installs first: minutes where pip's cache is cold


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.first_start", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8200, help="the port make serve listens on")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its folder is printed)")
    args = parser.parse_args(argv)
    clone = Path(tempfile.mkdtemp(prefix="captioner-first-start-")) / "captioner"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    started = time.perf_counter()
    server = subprocess.Popen(["make", "serve", f"PORT={args.port}"], cwd=clone, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)

    def alive() -> None:
        if server.poll() is not None:
            raise SystemExit(f"make serve exited with {server.returncode} before a caption")

    try:
        wait_for_readyz(f"http://127.0.0.1:{args.port}", alive, timeout=INSTALL_TIMEOUT_S)
        response = httpx.post(f"http://127.0.0.1:{args.port}/v1/captions", timeout=10,
                              files={"image": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")})
        response.raise_for_status()
        seconds = time.perf_counter() - started
        print(f"first caption {seconds:.1f} s after make serve; .venv {folder_bytes(clone / '.venv') / 1e6:.0f} MB; "
              f"{response.json()['captions'][0]['text']!r}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        if args.keep:
            print(f"the clone: {clone}")
        else:
            shutil.rmtree(clone.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
