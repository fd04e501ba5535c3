"""Readers for captioned-image datasets, all into one shape: ImageCaptions(image_path, captions, split).

load_dataset(path) recognises:
- Flickr8k, Kaggle layout: DIR/captions.txt (CSV, header `image,caption`) and DIR/Images/;
- Flickr8k, original layout: DIR/Flickr8k.token.txt (`name.jpg#0<TAB>caption`) and
  DIR/Flicker8k_Dataset/ (sic) or DIR/Images/;
  for both, DIR/Flickr_8k.{train,dev,test}Images.txt give the splits; without them every image is in `test`;
- COCO: captions_<split><year>.json (or DIR/annotations/captions_*.json), images in the folder
  named after the file (`train2014/`) beside `annotations/` or beside the json;
- Karpathy splits: dataset_<name>.json (or a DIR holding one), `restval` counted as `train`;
  images under DIR/Images/, else DIR/<filepath>/<filename>, else DIR/.
Anything malformed raises DatasetFormatError naming the file and line. Image files are not
opened here: feature extraction skips and reports unreadable ones.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")
FLICKR_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}


class DatasetFormatError(ValueError):
    """A dataset file that cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class ImageCaptions:
    image_path: Path
    captions: tuple[str, ...]
    split: str


@dataclass
class CaptionDataset:
    name: str
    root: Path
    items: list[ImageCaptions] = field(default_factory=list)

    def split(self, name: str) -> list[ImageCaptions]:
        return [item for item in self.items if item.split == name]


def load_dataset(path: str | Path) -> CaptionDataset:
    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name.startswith("captions_") and path.suffix == ".json":
            return _coco(path)
        if path.suffix == ".json":
            return _karpathy(path)
        raise DatasetFormatError(f"{path}: not a known dataset file (captions_*.json or dataset_*.json)")
    if (path / "captions.txt").is_file():
        return _flickr(path, path / "captions.txt", _read_kaggle_csv, path / "Images")
    if (path / "Flickr8k.token.txt").is_file():
        images = path / "Flicker8k_Dataset" if (path / "Flicker8k_Dataset").is_dir() else path / "Images"
        return _flickr(path, path / "Flickr8k.token.txt", _read_token_file, images)
    karpathy = sorted(path.glob("dataset_*.json"))
    if len(karpathy) == 1:
        return _karpathy(karpathy[0])
    coco = sorted((path / "annotations").glob("captions_*.json")) + sorted(path.glob("captions_*.json"))
    if coco:
        datasets = [_coco(file) for file in coco]
        return CaptionDataset(path.name, path, [item for d in datasets for item in d.items])
    raise DatasetFormatError(
        f"{path}: no dataset found; looked for captions.txt (Kaggle Flickr8k), Flickr8k.token.txt, "
        "one dataset_*.json (Karpathy) and captions_*.json (COCO)"
    )


# Flickr8k, both layouts: a caption file read into {image name: captions}, then the split lists.


def _read_kaggle_csv(file: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with open(file, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != ["image", "caption"]:
            raise DatasetFormatError(f"{file}:1: expected the header 'image,caption', found {header!r}")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) < 2 or not row[0].strip() or not ",".join(row[1:]).strip():
                raise DatasetFormatError(f"{file}:{line}: expected 'image,caption', found {row!r}")
            captions.setdefault(row[0].strip(), []).append(",".join(row[1:]).strip())
    return captions


_TOKEN_LINE = re.compile(r"^(?P<image>[^#\t]+)#\d+\t(?P<caption>.*\S.*)$")


def _read_token_file(file: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    with open(file, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            match = _TOKEN_LINE.match(text.rstrip("\n"))
            if not match:
                raise DatasetFormatError(f"{file}:{line}: expected 'image.jpg#N<TAB>caption', found {text.strip()!r}")
            captions.setdefault(match["image"].strip(), []).append(match["caption"].strip())
    return captions


def _flickr(root: Path, caption_file: Path, read, image_dir: Path) -> CaptionDataset:
    try:
        captions = read(caption_file)
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{caption_file}: not UTF-8 text ({error})") from error
    if not captions:
        raise DatasetFormatError(f"{caption_file}: no captions")
    split_of = _read_split_files(root, captions)
    items = [
        ImageCaptions(image_dir / name, tuple(texts), split_of(name))
        for name, texts in captions.items()
        if split_of(name)
    ]
    return _non_empty(CaptionDataset(root.name, root, items), caption_file)


def _read_split_files(root: Path, captions: dict[str, list[str]]):
    """name -> split; without split files every image is in `test`, with them unlisted images are left out."""
    present = {split: root / file for split, file in FLICKR_SPLIT_FILES.items() if (root / file).is_file()}
    if not present:
        return lambda name: "test"
    split_by_name = {}
    for split, file in present.items():
        for line, name in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            name = name.strip()
            if not name:
                continue
            if name not in captions:
                raise DatasetFormatError(f"{file}:{line}: image {name!r} has no captions")
            split_by_name[name] = split
    return split_by_name.get


# JSON formats.


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{file}:{error.lineno}: invalid JSON: {error.msg}") from error
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"{file}: not UTF-8 text ({error})") from error


def _coco(file: Path) -> CaptionDataset:
    data = _read_json(file)
    suffix = file.stem.removeprefix("captions_")  # e.g. train2014
    split = next((s for s in ("train", "val", "test") if suffix.startswith(s)), None)
    if split is None:
        raise DatasetFormatError(f"{file}: cannot tell the split from the name (captions_train*/val*/test*.json)")
    try:
        names = {image["id"]: image["file_name"] for image in data["images"]}
        captions: dict[int, list[str]] = {}
        for n, annotation in enumerate(data["annotations"]):
            if annotation["image_id"] not in names:
                raise DatasetFormatError(f"{file}: annotation {n} points to unknown image id {annotation['image_id']}")
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    except (KeyError, TypeError) as error:
        raise DatasetFormatError(f"{file}: not a COCO captions file (missing or malformed {error})") from error
    base = file.parent.parent if file.parent.name == "annotations" else file.parent
    image_dir = next((d for d in (base / suffix, file.parent / suffix) if d.is_dir()), file.parent)
    items = [ImageCaptions(image_dir / names[i], tuple(texts), split) for i, texts in captions.items()]
    return _non_empty(CaptionDataset(file.stem, base, items), file)


def _karpathy(file: Path) -> CaptionDataset:
    data = _read_json(file)
    try:
        images = data["images"]
        root = file.parent

        def image_path(image: dict) -> Path:
            for candidate in (root / "Images" / image["filename"], root / image.get("filepath", "") / image["filename"]):
                if candidate.exists():
                    return candidate
            return root / image["filename"]

        items = []
        for n, image in enumerate(images):
            split = "train" if image["split"] == "restval" else image["split"]
            if split not in SPLITS:
                raise DatasetFormatError(f"{file}: image {n} ({image['filename']}) has unknown split {image['split']!r}")
            texts = tuple(s["raw"].strip() for s in image["sentences"])
            items.append(ImageCaptions(image_path(image), texts, split))
    except (KeyError, TypeError) as error:
        raise DatasetFormatError(f"{file}: not a Karpathy split file (missing or malformed {error})") from error
    return _non_empty(CaptionDataset(str(data.get("dataset", file.stem)), root, items), file)


def _non_empty(dataset: CaptionDataset, file: Path) -> CaptionDataset:
    if not dataset.items:
        raise DatasetFormatError(f"{file}: no captioned images")
    return dataset
