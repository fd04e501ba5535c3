"""Run the CNN once per image and cache the pooled features on disk.

The cache file is keyed by the encoder's fingerprint (name, weights sha256, preprocessing) and
by the list of images with their sizes and modification times, so a changed encoder or a
changed data set never reuses stale features. A corrupt or unreadable image is skipped with a
warning naming it, and counted; it never stops the extraction.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model.encoder import Encoder


@dataclass
class FeatureTable:
    features: torch.Tensor  # [N, D], row i belongs to paths[i]
    paths: list[Path]
    skipped: list[Path]  # images that could not be read

    def rows(self) -> dict[Path, int]:
        return {path: i for i, path in enumerate(self.paths)}


class _Images(Dataset):
    def __init__(self, paths: list[Path], encoder: Encoder):
        self.paths = paths
        self.transform = encoder.transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.paths[i]) as image:
                return i, self.transform(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # PIL's errors for bad files
            return i, f"{type(error).__name__}: {error}"


def _collate(batch):
    return batch


def _cache_key(encoder: Encoder, paths: list[Path]) -> str:
    digest = hashlib.sha256(encoder.fingerprint.encode())
    for path in (p.resolve() for p in paths):
        stat = path.stat() if path.exists() else None
        digest.update(f"\n{path}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}".encode())
    return digest.hexdigest()[:24]


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def extract_features(
    encoder: Encoder, paths: list[Path], cache_dir: str | Path, batch_size: int = 8, workers: int = 1
) -> FeatureTable:
    """Features of every readable image in `paths`, from the cache when it has them."""
    paths = sorted(set(paths))
    cache_file = Path(cache_dir) / f"features-{_cache_key(encoder, paths)}.safetensors"
    if cache_file.is_file():
        stored = load_file(cache_file)
        return _table(stored["features"], paths, stored["kept"].bool())

    device = next(encoder.parameters()).device
    features = torch.zeros(len(paths), encoder.feature_dim)
    kept = torch.zeros(len(paths), dtype=torch.bool)
    loader = DataLoader(_Images(paths, encoder), batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"features ({encoder.name})", unit="batch", leave=False):
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
