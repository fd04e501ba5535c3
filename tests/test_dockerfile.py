"""No Docker engine runs here: check what can be checked without building the image."""
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def instructions(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def test_installs_the_project_like_make_serve():
    """Both install the project itself (pyproject.toml pins torch and torchvision), nothing else by hand."""
    dockerfile_installs = re.findall(r"pip install (\S+)", " ".join(instructions("RUN")))
    makefile_installs = re.findall(r"pip install -q (?:-e )?(\S+)", MAKEFILE)
    assert dockerfile_installs[-1] == "." and "." in makefile_installs
    assert "torch" not in " ".join(instructions("RUN"))  # the pins live in one place: pyproject.toml


def test_runs_as_non_root_with_healthcheck_and_port():
    assert instructions("USER") and instructions("USER")[-1] not in ("root", "0")  # uid 10001, made by useradd
    assert DOCKERFILE.index("USER") > DOCKERFILE.index("COPY weights/")
    assert any("/healthz" in h for h in instructions("HEALTHCHECK"))
    assert instructions("EXPOSE") == ["8000"]


def test_serves_the_app_without_debug_flags():
    [cmd] = instructions("CMD")
    argv = shlex.split(cmd.strip("[]").replace('", "', " ").replace('"', ""))
    assert argv[:3] == ["python", "-m", "app"]  # uvicorn with the service's protocol and SIGTERM handling
    assert not {"--reload", "--debug", "--log-level=debug"} & set(argv)


def test_weights_are_baked_in_and_data_is_not():
    assert "COPY weights/ weights/" in DOCKERFILE
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"data", "cache", "runs", ".venv"} <= set(ignored)


def test_cpu_by_default_with_a_cuda_variant():
    assert "ARG BASE=cpu" in DOCKERFILE
    assert "FROM base-${BASE}" in DOCKERFILE
    assert re.search(r"FROM nvidia/cuda:\S+ AS base-cuda", DOCKERFILE)


def test_hadolint_finds_nothing():
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
