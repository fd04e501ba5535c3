"""Run the CNN once per image and view, and cache the pooled features on disk.

A view is a photo seen another way before the encoder's own preprocessing: mirrored, or zoomed in
on its centre. The CNN is frozen, so augmenting the training photos means more cached feature rows
(one table per view), not slower epochs: training draws one view per caption per step.

The cache file is keyed by the encoder's fingerprint (name, weights sha256, preprocessing,
pooling), its runtime (eager PyTorch, ONNX Runtime, OpenVINO in bf16 or fp32: their features never mix), the view, and
the list of images with their sizes and modification times, so a changed encoder or a changed
data set never reuses stale features. A missing, corrupt or truncated image
is skipped with a warning naming it, and counted; it never stops the extraction.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.data import report_skipped
from model.encoder import Encoder
from runtime.files import atomic_write
from runtime.options import VIEWS


ZOOM = 0.8  # the zoomed views keep the centre 80% of each side


def _zoom(image: Image.Image) -> Image.Image:
    width, height = image.size
    left, top = round(width * (1 - ZOOM) / 2), round(height * (1 - ZOOM) / 2)
    return image.crop((left, top, width - left, height - top))


VIEW_TRANSFORMS = dict(zip(VIEWS, (
    lambda image: image,  # plain: the only view served and validated
    ImageOps.mirror,  # flip
    _zoom,  # zoom
    lambda image: ImageOps.mirror(_zoom(image)),  # zoom-flip
)))


@dataclass
class FeatureTable:
    features: torch.Tensor  # [N, D], row i belongs to paths[i]
    paths: list[Path]
    skipped: list[Path]  # images that could not be read

    def rows(self) -> dict[Path, int]:
        return {path: i for i, path in enumerate(self.paths)}

    @classmethod
    def joined(cls, tables: list[FeatureTable]) -> FeatureTable:
        """One table of several, rows in order."""
        return cls(torch.cat([t.features for t in tables]), [p for t in tables for p in t.paths], [p for t in tables for p in t.skipped])


class _Images(Dataset):
    def __init__(self, paths: list[Path], encoder: Encoder, view: str):
        self.paths = paths
        self.transform = encoder.transform
        self.view = VIEW_TRANSFORMS[view]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as image:
                return i, self.transform(self.view(image.convert("RGB")))
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # PIL's errors for bad files
            return i, f"{type(error).__name__}: {error}"


def _collate(batch):
    return batch


def _cache_key(encoder: Encoder, paths: list[Path], view: str) -> str:
    digest = hashlib.sha256(f"{encoder.fingerprint}:runtime={encoder.runtime}:view={view}".encode())
    for path in (p.resolve() for p in paths):
        stat = path.stat() if path.exists() else None
        digest.update(f"\n{path}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}".encode())
    return digest.hexdigest()[:24]


def extract_features(
    encoder: Encoder, paths: list[Path], cache_dir: str | Path, batch_size: int = 8, workers: int = 1,
    view: str = "plain",
) -> FeatureTable:
    """Features of every readable image in `paths` seen through `view`, from the cache when it has them."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    paths = sorted(set(paths))
    cache_file = Path(cache_dir) / f"features-{_cache_key(encoder, paths, view)}.safetensors"
    if cache_file.is_file():
        stored = load_file(cache_file)
        return _table(stored["features"], paths, stored["kept"].bool())

    device = next(encoder.parameters()).device
    features = torch.zeros(len(paths), encoder.feature_dim)
    kept = torch.zeros(len(paths), dtype=torch.bool)
    loader = DataLoader(_Images(paths, encoder, view), batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"features ({encoder.name}, {view})", unit="batch", leave=False):
            good = [(i, pixels) for i, pixels in batch if isinstance(pixels, torch.Tensor)]
            for i, problem in batch:
                if isinstance(problem, str):
                    warnings.warn(f"skipping unreadable image {paths[i]}: {problem}", stacklevel=2)
            if good:
                index = torch.tensor([i for i, _ in good])
                pixels = torch.stack([p for _, p in good]).to(device).contiguous(memory_format=torch.channels_last)
                features[index] = encoder(pixels).float().cpu()
                kept[index] = True
    features = features[kept].contiguous()
    atomic_write(cache_file, lambda tmp: save_file({"features": features, "kept": kept.to(torch.uint8)}, tmp))
    return _table(features, paths, kept)


def _table(features: torch.Tensor, paths: list[Path], kept: torch.Tensor) -> FeatureTable:
    return FeatureTable(features, [p for p, k in zip(paths, kept) if k], [p for p, k in zip(paths, kept) if not k])


def readable_features(encoder: Encoder, items: list, cache_dir: Path) -> tuple[list, torch.Tensor, int]:
    """The items (model.data.ImageCaptions) whose photos could be read, in order, their features
    [N, D] as training sees them (cached), and how many were skipped (named on stderr)."""
    table = extract_features(encoder, [item.image_path for item in items], cache_dir)
    report_skipped(table.skipped)
    rows = table.rows()
    items = [item for item in items if item.image_path in rows]
    return items, table.features[[rows[item.image_path] for item in items]], len(table.skipped)
