"""Readers for captioned-image datasets, all into one shape: ImageCaptions(image_path, captions, split).

load_dataset(path) recognises, by file names:
- Flickr8k, Kaggle layout: DIR/captions.txt (CSV, header `image,caption`) and DIR/Images/;
- Flickr8k, original layout: DIR/Flickr8k.token.txt (`name.jpg#0<TAB>caption`) and
  DIR/Flicker8k_Dataset/ (sic) or DIR/Images/.
  For both, DIR/Flickr_8k.{train,dev,test}Images.txt give the splits (dev is `val`) and images
  they do not list are left out; without them every image is in `test`. `path` may also be the
  captions file itself.
- COCO: captions_<split><year>.json, or DIR holding annotations/captions_*.json (all are read);
  images in the folder named after the file (`train2014/`) beside `annotations/`, else beside
  the json, else the json's own folder.
- Karpathy splits: dataset_<name>.json, or DIR holding exactly one; `restval` counts as `train`.
  The image layout is chosen once, from the first image that is found at DIR/Images/<filename>,
  else DIR/<filepath>/<filename>, else DIR/<filename>; when none exists, DIR/<filepath>/<filename>.
Only images with at least one caption become items. Anything malformed raises DatasetFormatError
naming the file and the line (CSV and text files) or the record (JSON, e.g. `annotations[3]`,
since the json module keeps no line numbers once parsed). Image files are not opened or even
checked here (too slow for COCO): feature extraction skips and reports unreadable ones.
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")
FLICKR_CAPTION_FILES = ("captions.txt", "Flickr8k.token.txt")
FLICKR_IMAGE_DIRS = ("Flicker8k_Dataset", "Images")
FLICKR_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
LOOKED_FOR = (
    "captions.txt (Flickr8k, Kaggle), Flickr8k.token.txt (Flickr8k), dataset_*.json (Karpathy), "
    "annotations/captions_*.json or captions_*.json (COCO)"
)


# What a decoder trained on each kind of data set can be expected to describe: the weights' manifest
# carries it ("note"), and the service shows it on /v1/model and its web page.
DOMAINS = {
    "Flickr8k": (
        "Trained on Flickr8k: 6,000 everyday photos from Flickr, mostly people, children and dogs, often outdoors and "
        "in action (running, jumping, climbing, playing in water, snow or on grass), each with five crowd-written "
        "captions. Good at who is doing what and where in such photos, in a short generic sentence. Weak at what "
        "Flickr8k rarely shows: most other animals, food, objects, indoor scenes, text, landmarks; it often gets "
        "counts, small details and the exact activity wrong, and it never names people or places."
    ),
    "synthetic": (
        "These weights describe synthetic scenes (coloured shapes on plain backgrounds), not photos. "
        "Retrain on Flickr8k or COCO with: python -m model.train --data DIR --out runs/real --export weights"
    ),
}


class DatasetFormatError(ValueError):
    """A dataset that cannot be read; the message names the file and the line or record."""


@dataclass(frozen=True)
class ImageCaptions:
    image_path: Path  # absolute
    captions: tuple[str, ...]
    split: str  # one of SPLITS


@dataclass
class CaptionDataset:
    name: str
    root: Path
    items: list[ImageCaptions]
    missing: dict[str, str] = field(default_factory=dict)  # split -> why the data set has none of it

    @property
    def domain(self) -> str:
        known = {name.lower(): text for name, text in DOMAINS.items()}  # Karpathy's files say "flickr8k"
        return known.get(self.name.lower(), f"Trained on {self.name}.")

    def split(self, name: str) -> list[ImageCaptions]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [item for item in self.items if item.split == name]

    def why_empty(self, name: str) -> str:
        """One sentence on why split `name` holds no images."""
        reason = self.missing.get(name, "no image is assigned to it")
        present = [s for s in SPLITS if any(item.split == s for item in self.items)]
        return f"split {name!r} of {self.root} is empty: {reason} (splits present: {', '.join(present) or 'none'})"


def load_dataset(path: str | Path) -> CaptionDataset:
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        return _load_file(path)
    raise DatasetFormatError(f"{path}: no such file or folder")


def _load_file(file: Path) -> CaptionDataset:
    if file.name in FLICKR_CAPTION_FILES:
        return _flickr(file)
    if file.suffix == ".json" and file.name.startswith("captions_"):
        return _coco([file])
    if file.suffix == ".json" and file.name.startswith("dataset_"):
        return _karpathy(file)
    raise DatasetFormatError(f"{file}: not a dataset file; expected one of {LOOKED_FOR}")


def _load_folder(folder: Path) -> CaptionDataset:
    for name in FLICKR_CAPTION_FILES:
        if (folder / name).is_file():
            return _flickr(folder / name)
    karpathy = sorted(folder.glob("dataset_*.json"))
    if len(karpathy) > 1:
        raise DatasetFormatError(f"{folder}: several Karpathy files ({', '.join(f.name for f in karpathy)}); pass one")
    if karpathy:
        return _karpathy(karpathy[0])
    coco = sorted((folder / "annotations").glob("captions_*.json")) or sorted(folder.glob("captions_*.json"))
    if coco:
        return _coco(coco)
    raise DatasetFormatError(f"{folder}: no dataset found; looked for {LOOKED_FOR}")


# Shared checks.


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")  # -sig: tolerate the BOM some Windows tools write
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{file}: not UTF-8 text ({error.reason} at byte {error.start})") from error


def _lines(file: Path):
    """(1-based line number, text) for each non-blank line."""
    # split("\n"), not splitlines(): a caption may hold other Unicode line separators.
    for line, text in enumerate(_read_text(file).split("\n"), start=1):
        if text.strip():
            yield line, text.rstrip("\r")


def _caption(text: str, where: str) -> str:
    if not text.strip():
        raise DatasetFormatError(f"{where}: empty caption")
    return text.strip()


def _require_items(items: list[ImageCaptions], file: Path) -> list[ImageCaptions]:
    if not items:
        raise DatasetFormatError(f"{file}: no captioned images")
    return items


# Flickr8k, both layouts: the captions file read into {image name: captions}, then the split lists.


def _read_kaggle_csv(file: Path) -> dict[str, list[str]]:
    rows = csv.reader(io.StringIO(_read_text(file), newline=""))
    captions: dict[str, list[str]] = {}
    try:
        header = next(rows, None)
        if header is None or [cell.strip() for cell in header] != ["image", "caption"]:
            raise DatasetFormatError(f"{file}:1: expected the header 'image,caption', found {header!r}")
        for row in rows:
            where = f"{file}:{rows.line_num}"  # the row's last line, if a quoted caption spans several
            if not row:
                continue
            if not row[0].strip():
                raise DatasetFormatError(f"{where}: missing image name")
            if len(row) < 2:
                raise DatasetFormatError(f"{where}: missing caption (expected 'image,caption')")
            # An unquoted comma splits a caption into several fields: join them back.
            captions.setdefault(row[0].strip(), []).append(_caption(",".join(row[1:]), where))
    except csv.Error as error:
        raise DatasetFormatError(f"{file}:{rows.line_num}: {error}") from error
    return captions


_TOKEN_LINE = re.compile(r"(?P<image>[^\t#]+)#\d+\t(?P<caption>.*)")


def _read_token_file(file: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    for line, text in _lines(file):
        match = _TOKEN_LINE.fullmatch(text)
        if not match:
            raise DatasetFormatError(f"{file}:{line}: expected 'image.jpg#N<TAB>caption', found {text!r}")
        captions.setdefault(match["image"].strip(), []).append(_caption(match["caption"], f"{file}:{line}"))
    return captions


FLICKR_READERS = {"captions.txt": _read_kaggle_csv, "Flickr8k.token.txt": _read_token_file}


def _flickr(caption_file: Path) -> CaptionDataset:
    root = caption_file.parent
    captions = FLICKR_READERS[caption_file.name](caption_file)
    split_of = _flickr_splits(root, captions)
    image_dir = next((root / d for d in FLICKR_IMAGE_DIRS if (root / d).is_dir()), root / "Images")
    items = [
        ImageCaptions(image_dir / name, tuple(texts), split_of[name])
        for name, texts in captions.items()
        if name in split_of
    ]
    missing = {split: f"{root / name} does not exist" for split, name in FLICKR_SPLIT_FILES.items()
               if not (root / name).is_file() and split not in split_of.values()}
    name = "synthetic" if (root / "scenes.json").is_file() else "Flickr8k"  # model.synthetic writes scenes.json
    return CaptionDataset(name, root, _require_items(items, caption_file), missing)


def _flickr_splits(root: Path, captions: dict[str, list[str]]) -> dict[str, str]:
    """Image name -> split, from the split files present; without any, every image is in `test`."""
    files = {split: root / name for split, name in FLICKR_SPLIT_FILES.items() if (root / name).is_file()}
    if not files:
        return dict.fromkeys(captions, "test")
    split_of: dict[str, str] = {}
    for split, file in files.items():
        for line, text in _lines(file):
            name = text.strip()
            if name not in captions:
                raise DatasetFormatError(f"{file}:{line}: image {name!r} has no captions")
            if split_of.setdefault(name, split) != split:  # an image in two splits would leak into evaluation
                raise DatasetFormatError(f"{file}:{line}: image {name!r} is already in the {split_of[name]} split")
    return split_of


# JSON formats.


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(_read_text(file))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{file}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno})") from error
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{file}: expected a JSON object at the top level")
    return data


def _field(record, key: str, kind: type | tuple[type, ...], where: str):
    """record[key], checked to be of `kind`; `where` names the file and record in the error."""
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind):
        raise DatasetFormatError(f"{where}: missing or malformed {key!r}")
    return value


def _caption_field(record, key: str, where: str) -> str:
    return _caption(_field(record, key, str, where), where)


def _coco(files: list[Path]) -> CaptionDataset:
    root = files[0].parent.parent if files[0].parent.name == "annotations" else files[0].parent
    items = [item for file in files for item in _coco_items(file, root)]
    return CaptionDataset(root.name, root, items)


def _coco_items(file: Path, root: Path) -> list[ImageCaptions]:
    suffix = file.stem.removeprefix("captions_")  # e.g. train2014
    split = next((s for s in SPLITS if suffix.startswith(s)), None)
    if split is None:
        raise DatasetFormatError(f"{file}: cannot tell the split from the name (captions_train/val/test*.json)")
    data = _read_json(file)
    names = {}
    for n, image in enumerate(_field(data, "images", list, str(file))):
        where = f"{file}: images[{n}]"
        names[_field(image, "id", (int, str), where)] = _field(image, "file_name", str, where)
    captions: dict[int | str, list[str]] = {}
    for n, annotation in enumerate(_field(data, "annotations", list, str(file))):
        where = f"{file}: annotations[{n}]"
        image_id = _field(annotation, "image_id", (int, str), where)
        if image_id not in names:
            raise DatasetFormatError(f"{where}: unknown image_id {image_id!r}")
        captions.setdefault(image_id, []).append(_caption_field(annotation, "caption", where))
    image_dir = next((d for d in (root / suffix, file.parent / suffix) if d.is_dir()), file.parent)
    items = [ImageCaptions(image_dir / name, tuple(captions[i]), split) for i, name in names.items() if i in captions]
    return _require_items(items, file)


KARPATHY_LAYOUTS = (  # (root, filepath, filename) -> image path, in order of preference
    lambda root, filepath, filename: root / "Images" / filename,
    lambda root, filepath, filename: root / filepath / filename,
    lambda root, filepath, filename: root / filename,
)


def _karpathy(file: Path) -> CaptionDataset:
    data = _read_json(file)
    root = file.parent
    images = _field(data, "images", list, str(file))
    entries = [_karpathy_image(image, f"{file}: images[{n}]") for n, image in enumerate(images)]
    layout = _karpathy_layout(root, *entries[0][:2]) if entries else KARPATHY_LAYOUTS[1]
    items = [
        ImageCaptions(layout(root, filepath, filename), texts, split)
        for filepath, filename, split, texts in entries
        if texts
    ]
    name = data["dataset"] if isinstance(data.get("dataset"), str) else root.name
    return CaptionDataset(name, root, _require_items(items, file))


def _karpathy_layout(root: Path, filepath: str, filename: str):
    """The first layout under which this image exists, else <filepath>/<filename>.

    Chosen once, on the first image: checking every image would stat 120k files for COCO.
    """
    return next((f for f in KARPATHY_LAYOUTS if f(root, filepath, filename).exists()), KARPATHY_LAYOUTS[1])


def _karpathy_image(image, where: str) -> tuple[str, str, str, tuple[str, ...]]:
    """(filepath, filename, split, captions) of one entry in a Karpathy file's image list."""
    filename = _field(image, "filename", str, where)
    where = f"{where} ({filename})"
    filepath = _field(image, "filepath", str, where) if "filepath" in image else ""
    split = KARPATHY_SPLITS.get(_field(image, "split", str, where))
    if split is None:
        raise DatasetFormatError(f"{where}: unknown split {image['split']!r} (expected {', '.join(KARPATHY_SPLITS)})")
    sentences = _field(image, "sentences", list, where)
    texts = tuple(_caption_field(s, "raw", f"{where} sentences[{k}]") for k, s in enumerate(sentences))
    return filepath, filename, split, texts


def report_skipped(skipped: list, shown: int = 20) -> None:
    """Name the images that could not be read (paths, or lines that say why), on stderr: a skipped
    photo is never a silent drop."""
    if skipped:
        names = "".join(f"\n  {path}" for path in skipped[:shown])
        more = f"\n  ... and {len(skipped) - shown} more" if len(skipped) > shown else ""
        print(f"skipped {len(skipped)} unreadable images:{names}{more}", file=sys.stderr)
