"""Gather every wheel the image needs into one folder, for a build that reaches no package index.

    python3 scripts/wheelhouse.py [--out wheelhouse] [--gpu] [pip options, e.g. --extra-index-url URL]

Run it on a host that reaches an index (or its mirror): it runs `pip wheel` on this project with
the host's own pip configuration, so the wheels are those pip picks here. Then `docker build .`
(or podman) installs from the folder with --no-index, checking each wheel against
wheelhouse/requirements-cpu.txt (name==version --hash=sha256:...), which this script writes: the
base install, no torch. With --gpu it also gathers the gpu extra (torch and its CUDA wheels) and
writes requirements-gpu.txt, for `docker build --build-arg VARIANT=gpu`. The project's own wheel
is installed apart from them, so a change to the code leaves the cached dependency layer as it is.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 scripts/wheelhouse.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROJECT / "wheelhouse", help="the folder, emptied first")
    parser.add_argument("--gpu", action="store_true", help="also the gpu extra's wheels (torch, CUDA), for VARIANT=gpu")
    args, pip_options = parser.parse_known_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    for variant, target in [("cpu", str(PROJECT)), *([("gpu", f"{PROJECT}[gpu]")] if args.gpu else [])]:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(args.out), *pip_options, target],
                       check=True)
        wheels = sorted(args.out.glob("*.whl"))  # the gpu pass adds its wheels to the cpu pass's
        lines = []
        for wheel in wheels:
            name, version = wheel.name.split("-")[:2]  # wheel names spell '-' inside a name as '_'
            if name != "captioner":
                lines.append(f"{name}=={version} --hash=sha256:{sha256(wheel)}")
        (args.out / f"requirements-{variant}.txt").write_text("\n".join(lines) + "\n")
        size = sum(w.stat().st_size for w in wheels)
        print(f"{args.out}: {variant}: {len(lines) + 1} wheels, {size / 2**30:.2f} GiB; requirements-{variant}.txt pins "
              f"{len(lines)} dependencies by sha256")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    main()
