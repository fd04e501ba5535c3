"""captioner caption (app.cli) and the in-process API it shares (app.bulk): real photos made by PIL,
the shipped weights, the real service for --server. In-process runs share one loaded model
(app.cli.connect is replaced by it) but for one run of the installed console script end to end."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app import cli
from app.bulk import InProcess
from tests.conftest import ROOT, WEIGHTS, scene

CONSOLE_SCRIPT = Path(sys.executable).with_name("captioner")
FIELDS = {"path", "caption", "confidence", "low_confidence", "tags", "model", "error"}
NOT_AN_IMAGE = "not an image in a supported format"


@pytest.fixture(scope="module")
def local() -> InProcess:
    return InProcess.load(WEIGHTS)


@pytest.fixture
def in_process(local, monkeypatch):
    """captioner caption in this process, on the model loaded once for the module."""
    monkeypatch.setattr(cli, "connect", lambda args: local)


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    """photos/a.jpg, photos/sub/b.png, photos/sub/deeper/c.webp and photos/notes.txt, run from tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos" / "sub" / "deeper").mkdir(parents=True)
    scene(colour="red").save(tmp_path / "photos" / "a.jpg")
    scene(colour="blue").save(tmp_path / "photos" / "sub" / "b.png")
    scene(colour="green").save(tmp_path / "photos" / "sub" / "deeper" / "c.webp")
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    return Path("photos")


def captioner(*args: str, script: bool = False) -> subprocess.CompletedProcess:
    command = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "app.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def photos_inferred(local: InProcess) -> float:
    """The photos the model has run on: the sum of its batch sizes, as the service's /metrics counts them."""
    [family] = local.metrics.batch_size.collect()
    return next(sample.value for sample in family.samples if sample.name.endswith("_sum"))


def assert_captioned(record: dict) -> None:
    assert set(record) == FIELDS and record["error"] is None
    assert record["caption"] and 0 <= record["confidence"] <= 1 and isinstance(record["low_confidence"], bool)
    assert record["model"].startswith("captioner-") and isinstance(record["tags"], list)
    assert all(set(tag) == {"word", "class_name", "probability"} for tag in record["tags"])


def test_the_console_script_captions_a_folder_recursively_and_a_bad_photo_becomes_an_error_record(photos):
    assert CONSOLE_SCRIPT.is_file(), "pip install -e . installs the captioner console script"
    (photos / "sub" / "broken.jpg").write_bytes(b"these bytes are no JPEG")
    result = captioner("caption", str(photos), "--out", "out.jsonl", script=True)
    assert result.returncode == 1, result.stderr  # some failed; the others are in the file
    records = {record["path"]: record for record in jsonl(Path("out.jsonl"))}
    assert set(records) == {"photos/a.jpg", "photos/sub/b.png", "photos/sub/deeper/c.webp", "photos/sub/broken.jpg"}
    for path in ("photos/a.jpg", "photos/sub/b.png", "photos/sub/deeper/c.webp"):
        assert_captioned(records[path])
    broken = records.pop("photos/sub/broken.jpg")
    assert NOT_AN_IMAGE in broken["error"] and all(broken[field] is None for field in FIELDS - {"path", "error"})
    assert "images/s" in result.stderr  # the progress bar and the summary
    assert "1 failed" in result.stderr and "photos/sub/broken.jpg" in result.stderr
    assert "1 file skipped" in result.stderr and "photos/notes.txt" in result.stderr


def test_globs_and_named_files_into_csv(photos, in_process, capsys):
    assert cli.main(["caption", "photos/**/*.png", "photos/**/*.webp", "photos/a.jpg", "--out", "out.csv"]) == 0
    rows = list(csv.DictReader(Path("out.csv").open()))
    assert [row["path"] for row in rows] == ["photos/sub/b.png", "photos/sub/deeper/c.webp", "photos/a.jpg"]
    for row in rows:
        assert set(row) == FIELDS and row["error"] == "" and row["caption"]
        assert 0 <= float(row["confidence"]) <= 1 and row["low_confidence"] in ("true", "false")
        assert all(set(tag) == {"word", "class_name", "probability"} for tag in json.loads(row["tags"]))
    assert "skipped" not in capsys.readouterr().err  # a glob's matches are all photos here


def test_a_run_again_skips_the_photos_captioned_and_retries_the_failed(photos, in_process, local, capsys):
    (photos / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    assert cli.main(["caption", str(photos), "--out", "out.jsonl"]) == 1
    first = Path("out.jsonl").read_text().splitlines()
    scene(colour="yellow").save(photos / "sub" / "broken.png")  # mended
    scene(colour="purple").save(photos / "new.jpg")
    before = photos_inferred(local)
    assert cli.main(["caption", str(photos), "--out", "out.jsonl"]) == 0
    assert photos_inferred(local) - before == 2  # the mended one and the new one; the three captioned before are not run again
    records = jsonl(Path("out.jsonl"))
    assert sorted(record["path"] for record in records) == sorted(
        ["photos/a.jpg", "photos/new.jpg", "photos/sub/b.png", "photos/sub/broken.png", "photos/sub/deeper/c.webp"])
    for record in records:
        assert_captioned(record)
    kept = [line for line in first if json.loads(line)["error"] is None]
    assert Path("out.jsonl").read_text().splitlines()[:3] == kept  # the error record gave way; the others stayed as written
    assert "2 photos captioned" in capsys.readouterr().err

    assert cli.main(["caption", str(photos), "--out", "out.jsonl"]) == 0
    assert "nothing to do: all 5 photos" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["out.jsonl", "out.csv"])
def test_a_last_line_cut_short_is_written_again_not_duplicated(photos, in_process, out):
    assert cli.main(["caption", str(photos), "--out", out]) == 0
    whole = Path(out).read_text()
    Path(out).write_text(whole[:-25])  # an interrupted run: the last record cut short
    assert cli.main(["caption", str(photos), "--out", out]) == 0
    lines = Path(out).read_text().splitlines()
    paths = [json.loads(line)["path"] for line in lines] if out.endswith(".jsonl") else \
        [row["path"] for row in csv.DictReader(lines)]
    assert sorted(paths) == ["photos/a.jpg", "photos/sub/b.png", "photos/sub/deeper/c.webp"]
    assert Path(out).read_text().endswith("\n") and len(lines) == 3 + out.endswith(".csv")


@pytest.mark.parametrize("args, message", [
    (["nowhere", "--out", "out.jsonl"], "nowhere: no such file or folder"),
    (["empty", "--out", "out.jsonl"], "empty: no photos in this folder"),
    (["texts", "--out", "out.jsonl"], "texts: no photos in this folder"),
    (["texts/*.jpg", "--out", "out.jsonl"], "texts/*.jpg: no photos in this glob"),
    (["photo.png", "--out", "missing/out.jsonl"], "cannot write missing/out.jsonl"),
    (["photo.png", "--out", "empty"], "cannot use empty as the output"),
    (["photo.png", "--out", "photo.png"], "photo.png exists and is not a captioner output"),
    (["photo.png", "--out", "texts/notes.csv"], "does not start with the header"),
    (["photo.png", "--out", "out.jsonl", "--concurrency", "4"], "--concurrency goes with --server"),
    (["photo.png", "--out", "out.jsonl", "--server", "localhost:8000"], "--server takes an http:// or https:// URL"),
    (["photo.png", "--out", "out.jsonl", "--weights", "nowhere"], "cannot load the model: nowhere/manifest.json is missing"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.csv").write_text("some,other,table\n")
    scene().save(tmp_path / "photo.png")
    result = captioner("caption", *args)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and message in result.stderr, result.stderr
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_text() == ""  # no record
    assert (tmp_path / "texts" / "notes.csv").read_text() == "some,other,table\n"


def test_a_server_that_does_not_answer_is_exit_2():
    result = captioner("caption", str(ROOT / "docs" / "examples" / "cat.jpg"), "--out", "/dev/null",
                       "--server", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert result.returncode == 2 and "cannot reach http://127.0.0.1:9" in result.stderr


def test_server_mode_sends_the_photos_to_a_running_service(photos, server, local):
    (photos / "broken.jpg").write_bytes(b"no JPEG at all")
    assert cli.main(["caption", str(photos), "--out", "out.jsonl", "--server", server, "--concurrency", "3"]) == 1
    records = {record["path"]: record for record in jsonl(Path("out.jsonl"))}
    assert list(records) == ["photos/a.jpg", "photos/broken.jpg", "photos/sub/b.png", "photos/sub/deeper/c.webp"]  # in order
    assert NOT_AN_IMAGE in records.pop("photos/broken.jpg")["error"]  # the service's 415, as a record
    for record in records.values():
        assert_captioned(record)
        assert record["model"] == local.captioner.model_id


def assert_same_answer(one: dict, other: dict) -> None:
    """The same captions and tags, as POST /v1/captions answers them; their numbers to rounding (a photo's
    floats can differ in the last digits with the batch it ran in)."""
    assert set(one) == set(other) and one["model"] == other["model"] and one["low_confidence"] == other["low_confidence"]
    for field, words, numbers in (("captions", ["text"], ["log_prob", "confidence"]), ("tags", ["word", "class_name"], ["probability"])):
        assert [[item[key] for key in words] for item in one[field]] == [[item[key] for key in words] for item in other[field]]
        for key in numbers:
            assert [item[key] for item in one[field]] == pytest.approx([item[key] for item in other[field]], abs=1e-3)


def test_the_in_process_api_answers_what_the_http_api_answers(server, local, tmp_path):
    photo = ROOT / "docs" / "examples" / "cat.jpg"  # a photo with a tag, and a caption guided by it
    answered = httpx.post(f"{server}/v1/captions", files={"image": ("cat.jpg", photo.read_bytes())}, timeout=60).json()
    [captioned] = local.caption([photo])
    assert captioned.response.tags[0].word == "cat" in captioned.response.captions[0].text.split()
    assert_same_answer(captioned.response.model_dump(), answered)

    png = tmp_path / "scene.png"
    scene(colour="blue").save(png)
    from_path, from_image = local.caption([png, Image.open(png)])  # a path is read as an upload is; a PIL image taken as it is
    assert_same_answer(from_image.response.model_dump(), from_path.response.model_dump())


def test_captioner_serve_takes_the_flags_of_python_m_app():
    served = captioner("serve", "--help", script=True)
    module = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, timeout=60)
    assert served.returncode == 0 == module.returncode
    assert served.stdout.startswith("usage: captioner serve [-h] [--host HOST] [--port PORT]")
    assert module.stdout.startswith("usage: python -m app [-h] [--host HOST] [--port PORT]")
    assert served.stdout.split("options:")[1] == module.stdout.split("options:")[1]
