"""captioner: caption photos into a file, or serve the API.

    captioner caption PATH... --out FILE [--server URL --concurrency N]
    captioner serve [--host HOST] [--port PORT]      # as python -m app
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from app import __main__ as serving
from runtime.cli import HelpFormatter

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")  # the formats the service takes (runtime.images)
FIELDS = ("path", "caption", "confidence", "low_confidence", "tags", "model", "error")
LISTED = 20  # failed photos and skipped files named in the summary; the rest are counted

CAPTION_HELP = """Caption every photo under the paths into FILE, one record per photo: JSON Lines, or CSV
when FILE ends in .csv. A record holds the photo's path, its caption, the confidence,
low_confidence, the tags and the model id; a photo that cannot be captioned gets a record with
its error (the rest null), and the run goes on.

Folders are searched recursively for files named like photos (.jpg .jpeg .png .webp .gif .bmp,
any case); other files are skipped and listed at the end. A file named on the command line is
always tried. Globs are expanded here too ('photos/**/*.jpg').

Run it again with the same --out and it resumes: photos with a caption in FILE are skipped;
those that failed, and a last record cut short by an interruption, are done again.

The model runs in this process, as the service runs it (CAPTIONER_* settings, the weights'
own decoding), unless --server sends the photos to a running service.

Exit status: 0 every photo captioned, 1 some failed (the others are in FILE), 2 a usage error
(nothing done)."""


class UsageError(Exception):
    """Bad input, found before any work: one line on stderr, exit 2."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serving.serve(args)
        return 0
    try:
        return caption(args)
    except UsageError as error:
        print(f"captioner caption: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = commands.add_parser("caption", help="caption photos, folders and globs into a JSON Lines or CSV file",
                                  description=CAPTION_HELP, formatter_class=HelpFormatter)
    command.add_argument("paths", nargs="+", metavar="PATH", help="photos, folders (searched recursively), globs")
    command.add_argument("--out", required=True, type=Path, metavar="FILE", help="the records: CSV if it ends in .csv, "
                         "else JSON Lines; appended to, resuming, where it exists")
    command.add_argument("--server", metavar="URL", help="send the photos to the service at URL (POST /v1/captions) "
                         "instead of running the model here")
    command.add_argument("--concurrency", type=int, metavar="N", help="with --server: requests under way at a time (default: 8)")
    command.add_argument("--weights", type=Path, metavar="DIR", help="without --server: the weights folder "
                         "(default: $CAPTIONER_WEIGHTS_DIR, else the shipped weights/)")
    serve = commands.add_parser("serve", help="serve the API and the web page, as python -m app",
                                description=serving.__doc__, formatter_class=HelpFormatter)
    serving.add_arguments(serve)
    return parser


def caption(args: argparse.Namespace) -> int:
    """Every check before any work: the options, the paths, the output file, then the model or the service."""
    if args.server is None and args.concurrency is not None:
        raise UsageError("--concurrency goes with --server")
    if args.server is not None and args.weights is not None:
        raise UsageError("--weights goes without --server: the service captions with its own")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, not {args.concurrency}")
    if args.server is not None and not args.server.startswith(("http://", "https://")):
        raise UsageError(f"--server takes an http:// or https:// URL, not {args.server!r}")
    photos, skipped = find_photos(args.paths)
    with Output.open(args.out) as output:
        todo = [photo for photo in photos if key(photo) not in output.done]
        if not todo:
            print(f"nothing to do: all {counted(len(photos), 'photo')} are in {args.out} already", file=sys.stderr)
            return 0
        backend = connect(args)
        written, failed, seconds, interrupted = run(backend, todo, output)
    print(summary(args.out, written - len(failed), len(photos) - len(todo), failed, skipped, seconds), file=sys.stderr)
    if interrupted:
        print("interrupted: run the same command again to go on", file=sys.stderr)
        return 130
    return 1 if failed else 0


def connect(args: argparse.Namespace):
    """The backend, ready: a running service (checked), or the model loaded in this process. Imported
    here, after the checks, so that --help and a usage error answer without loading the runtimes."""
    from app.bulk import InProcess, Remote, ServiceUnavailable

    if args.server is not None:
        remote = Remote(args.server, args.concurrency or 8)
        try:
            remote.wait_ready()
        except ServiceUnavailable as error:
            raise UsageError(str(error)) from None
        return remote
    try:
        return InProcess.load(args.weights)
    except Exception as error:
        raise UsageError(f"cannot load the model: {error}") from None


def run(backend, todo: list[Path], output: Output) -> tuple[int, list[tuple[Path, str]], float, bool]:
    """Caption todo into output with a progress bar (images/s, time left): the records written, the
    failed photos with their errors, the seconds it took, and whether Ctrl-C cut it short (every
    record written until then is whole)."""
    from tqdm import tqdm

    failed = []
    started = time.perf_counter()
    with tqdm(total=len(todo), unit=" images", file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            for captioned in backend.caption(todo):
                output.write(record(captioned))
                if captioned.error is not None:
                    failed.append((captioned.source, captioned.error))
                bar.update()
        except KeyboardInterrupt:
            return bar.n, failed, time.perf_counter() - started, True
    return bar.n, failed, time.perf_counter() - started, False


def record(captioned) -> dict:
    """One line of the output: app.bulk.Captioned's best caption, its confidence and the photo's tags, or its error."""
    path, response = str(captioned.source), captioned.response
    if response is None:
        return dict.fromkeys(FIELDS) | {"path": path, "error": captioned.error}
    best = response.captions[0]
    return {"path": path, "caption": best.text, "confidence": best.confidence, "low_confidence": response.low_confidence,
            "tags": [tag.model_dump() for tag in response.tags], "model": response.model, "error": None}


def summary(out: Path, captioned: int, already: int, failed: list[tuple[Path, str]], skipped: list[Path],
            seconds: float) -> str:
    lines = [f"{out}: {counted(captioned, 'photo')} captioned in {seconds:.1f} s ({captioned / seconds:.1f} images/s)"
             + (f", {already} there already" if already else "")]
    if failed:
        lines.append(f"{len(failed)} failed (their records hold the error; a new run tries them again):")
        lines += listed([f"{path}: {error}" for path, error in failed])
    if skipped:
        lines.append(f"{counted(len(skipped), 'file')} skipped, not named like photos ({' '.join(PHOTO_SUFFIXES)}):")
        lines += listed([str(path) for path in skipped])
    return "\n".join(lines)


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def listed(items: list[str]) -> list[str]:
    return [f"  {item}" for item in items[:LISTED]] + ([f"  ... and {len(items) - LISTED} more"] if len(items) > LISTED else [])


# ---------------------------------------------------------------- the photos


def key(path: str | Path) -> str:
    """What makes two paths one photo: the same absolute path, from the folder it is run in."""
    return os.path.abspath(path)


def find_photos(arguments: list[str]) -> tuple[list[Path], list[Path]]:
    """The photos named, found in the folders or matched by the globs, each once, in order; and the
    files skipped for a name no photo has. UsageError for a path that is not there, or a folder
    or glob that holds no photo."""
    photos: dict[str, Path] = {}
    skipped: dict[str, Path] = {}
    for argument in arguments:
        path = Path(argument)
        if path.is_file():
            found, others = [path], []  # named: tried whatever its name
        elif path.is_dir() or any(char in argument for char in "*?["):
            matches = [path] if path.is_dir() else [Path(match) for match in sorted(glob.glob(argument, recursive=True))]
            files = [file for match in matches for file in (walk(match) if match.is_dir() else [match])]
            found = [file for file in files if file.suffix.lower() in PHOTO_SUFFIXES]
            others = [file for file in files if file.suffix.lower() not in PHOTO_SUFFIXES]
            if not found:
                what = "folder" if path.is_dir() else "glob"
                raise UsageError(f"{argument}: no photos in this {what} ({' '.join(PHOTO_SUFFIXES)})")
        else:
            raise UsageError(f"{argument}: no such file or folder")
        photos |= {key(file): file for file in found if key(file) not in photos}
        skipped |= {key(file): file for file in others}
    return list(photos.values()), [file for name, file in skipped.items() if name not in photos]


def walk(folder: Path) -> list[Path]:
    """Every file under folder, in name order (links to folders are not followed: no loops)."""
    return sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names)


# ---------------------------------------------------------------- the output file


class JsonLines:
    header = ""

    @staticmethod
    def line(record: dict) -> str:
        return json.dumps(record, ensure_ascii=False) + "\n"

    @staticmethod
    def read(line: str) -> dict:
        record = json.loads(line)
        if not isinstance(record, dict) or "path" not in record:
            raise ValueError("not a record")
        return record


class Csv:
    """Nulls are empty cells, booleans true and false, the tags a JSON list in one cell."""
    header = ",".join(FIELDS) + "\n"

    @staticmethod
    def line(record: dict) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([Csv.cell(record[field]) for field in FIELDS])
        return buffer.getvalue()

    @staticmethod
    def cell(value) -> str:
        if value is None:
            return ""
        return json.dumps(value, ensure_ascii=False) if isinstance(value, (bool, list)) else str(value)

    @staticmethod
    def read(line: str) -> dict:
        row = next(csv.reader([line]))
        if len(row) != len(FIELDS):
            raise ValueError(f"{len(row)} cells, not {len(FIELDS)}")
        return {field: cell or None for field, cell in zip(FIELDS, row)}


class Output:
    """The output file, opened to append after what an earlier run left in it (done: the keys of
    the photos it holds captions of). Each record is flushed as it is written, so an interruption
    can cut only the last line short."""

    def __init__(self, file: TextIO, form: type[JsonLines] | type[Csv], done: set[str]):
        self.file = file
        self.form = form
        self.done = done

    @classmethod
    def open(cls, path: Path) -> Output:
        """UsageError where the file cannot be written, or holds something other than records."""
        form = Csv if path.suffix.lower() == ".csv" else JsonLines
        lines = read_lines(path)
        kept = [line for line in cls.records(path, form, lines) if line is not None]
        if len(kept) < len(lines) - bool(form.header and lines):  # errors to retry, a cut line: written again without them
            rewrite(path, form.header + "".join(line for line, _ in kept))
        try:
            file = path.open("a", encoding="utf-8", newline="")
        except OSError as error:
            raise UsageError(f"cannot write {path}: {error.strerror or error}") from None
        if file.tell() == 0:
            file.write(form.header)
        return cls(file, form, {key(record["path"]) for _, record in kept})

    @staticmethod
    def records(path: Path, form, lines: list[str]) -> Iterable[tuple[str, dict] | None]:
        """Per line after the header, the line and its record where the record is a caption to keep;
        None for an error record or a last line cut short (no newline)."""
        if form.header and lines and lines[0] != form.header:
            raise UsageError(f"{path} exists and does not start with the header {form.header.strip()!r}: not overwritten")
        for number, line in enumerate(lines[bool(form.header):], start=1 + bool(form.header)):
            if number == len(lines) and not line.endswith("\n"):
                yield None  # cut short by an interrupted run
                continue
            try:
                record = form.read(line)
            except ValueError as error:
                raise UsageError(f"{path}:{number} is not a captioner record ({error}): not overwritten") from None
            yield (line, record) if record.get("error") is None else None

    def write(self, record: dict) -> None:
        self.file.write(self.form.line(record))
        self.file.flush()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def read_lines(path: Path) -> list[str]:
    """The file's lines, each with its newline but a last one cut short; none where it is not there yet.
    Split at newlines only: str.splitlines would split a JSON line at a U+2028 in a path too."""
    try:
        *whole, last = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        raise UsageError(f"{path} exists and is not a captioner output (not UTF-8 text): not overwritten") from None
    except OSError as error:
        raise UsageError(f"cannot use {path} as the output: {error.strerror or error}") from None
    return [line + "\n" for line in whole] + ([last] if last else [])


def rewrite(path: Path, text: str) -> None:
    """Replace the file's text at once: interrupted, the old file is still whole."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_text(text, encoding="utf-8", newline="")
        os.replace(temporary, path)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror or error}") from None


if __name__ == "__main__":
    sys.exit(main())
