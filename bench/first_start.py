"""A new user's first start: a fresh clone's `make serve`, timed to its first caption.

    python -m bench.first_start [--port 8200] [--keep]

Clones this checkout's HEAD into a temporary folder, runs `make serve` there (which makes .venv
and installs the base install from pip's index or cache) and posts docs/examples/cameraman.jpg
until a caption comes back. Prints the seconds from `make serve` to that caption, the size of the
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

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "docs" / "examples" / "cameraman.jpg"


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
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"make serve exited with {server.returncode} before a caption")
            try:
                response = httpx.post(f"http://127.0.0.1:{args.port}/v1/captions", timeout=10,
                                      files={"image": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")})
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
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
