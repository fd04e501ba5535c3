"""The Dockerfile read as text, on any machine: tests/test_container.py builds and runs it where podman can."""
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def test_serves_the_app_without_debug_flags():
    [cmd] = instructions("CMD")
    argv = shlex.split(cmd.strip("[]").replace('", "', " ").replace('"', ""))
    assert argv[:3] == ["python", "-m", "app"]  # uvicorn with the service's protocol and SIGTERM handling
    assert not {"--reload", "--debug", "--log-level=debug"} & set(argv)


def test_weights_are_baked_in_and_checked_and_data_is_not():
    assert "COPY weights/ weights/" in DOCKERFILE
    assert any("python -m runtime.weights weights" in run for run in instructions("RUN"))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"data", "cache", "runs", ".venv"} <= set(ignored)


def test_hadolint_finds_nothing():
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_one_dockerfile_builds_the_cpu_image_by_default_and_the_gpu_one_by_argument():
    assert "VARIANT=cpu" in instructions("ARG")
    assert any("requirements-${VARIANT}.txt" in copy for copy in instructions("COPY"))
    wheelhouse = (ROOT / "scripts" / "wheelhouse.py").read_text()
    assert "requirements-{variant}.txt" in wheelhouse and '"--gpu"' in wheelhouse
