"""How much of each object's colour and shape a linear read-out finds in v, on two-object scenes.

    python scripts/probe_v.py --data data/synth30k          # any folder made by python -m model.synthetic

For --train two-object training scenes and --val two-object validation scenes (each validation
scene holds a colour-shape pair training never showed), fits one linear classifier per attribute
(left colour, right colour, left shape, right shape) on standardised features and prints how often
all four are right on the validation scenes: once from the classic v (the pretrained head's 1,280
channels averaged over the image) and once from the default encoder's v.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.data import ImageCaptions, load_dataset
from model.encoder import Encoder, build_encoder
from model.features import extract_features
from model.synthetic import COLOURS, SHAPES, load_scenes


def two_object_scenes(items: list[ImageCaptions], scenes: dict[str, dict], limit: int) -> tuple[list[Path], torch.Tensor]:
    """Paths and labels [N, 4]: left colour, right colour, left shape, right shape."""
    items = [item for item in items if len(scenes[item.image_path.name]["objects"]) == 2]
    paths, labels = [], []
    for item in items[:limit]:
        left, right = scenes[item.image_path.name]["objects"]
        paths.append(item.image_path)
        labels.append([*(list(COLOURS).index(o["colour"]) for o in (left, right)),
                       *(list(SHAPES).index(o["shape"]) for o in (left, right))])
    return paths, torch.tensor(labels)


class HeadMean(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels).mean(dim=(2, 3))  # [B, 1280, 7, 7] -> [B, 1280]


def all_four_right(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    right = torch.ones(len(val_y), dtype=torch.bool)
    for column, classes in enumerate((len(COLOURS), len(COLOURS), len(SHAPES), len(SHAPES))):
        torch.manual_seed(column)
        probe = torch.nn.Linear(train_x.size(1), classes)
        optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(200):
            loss = F.cross_entropy(probe(train_x), train_y[:, column])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            right &= probe(val_x).argmax(1) == val_y[:, column]
    return right.float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder written by python -m model.synthetic")
    parser.add_argument("--train", type=int, default=2500, help="two-object training scenes (default 2500)")
    parser.add_argument("--val", type=int, default=600, help="two-object validation scenes (default 600)")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="CNN feature cache (default: cache)")
    args = parser.parse_args(argv)
    if not (args.data / "scenes.json").is_file():
        parser.error(f"{args.data} holds no scenes.json: make it with python -m model.synthetic")
    encoder = build_encoder()
    dataset, scenes = load_dataset(args.data), load_scenes(args.data)
    (train_paths, train_y), (val_paths, val_y) = (two_object_scenes(dataset.split(split), scenes, limit)
                                                  for split, limit in (("train", args.train), ("val", args.val)))
    if not len(train_y) or not len(val_y):
        parser.error(f"{args.data} has no two-object scenes in its train or val split")
    net = encoder.trunk.net
    classic = Encoder(encoder.name, HeadMean(net), net._conv_head.out_channels, encoder.preprocessing, encoder.weights_sha256)
    print(f"{len(train_y)} training and {len(val_y)} validation two-object scenes: both objects right")
    for name, features_of in (("classic v: head mean", classic), ("v of the default encoder", encoder)):
        table = extract_features(features_of, train_paths + val_paths, args.cache_dir)
        rows = table.rows()
        train_x = table.features[[rows[p] for p in train_paths]]
        val_x = table.features[[rows[p] for p in val_paths]]
        label = f"{name} ({train_x.size(1)}-d)"
        print(f"  {label:<36}{all_four_right(train_x, train_y, val_x, val_y):.1%}")


if __name__ == "__main__":
    main()
