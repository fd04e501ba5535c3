"""How much a linear read-out finds in v, for each way of pooling the CNN (model.encoder.POOLINGS).

    python scripts/probe_v.py --data ../shared/data/flickr8k   # photos: which words the captions use
    python scripts/probe_v.py --data data/synth30k              # synthetic scenes: both objects named right

Photos: for each word used by at least 1% of the training photos' captions (and by at most half of
them, so "a" and "the" do not count), a logistic read-out predicts from v whether any of a photo's
captions uses it; the score is the mean average precision over these words on the validation photos.
It asks what a decoder conditioned on v needs: which things, people, colours and actions are there.

Synthetic scenes (a folder written by python -m model.synthetic): on --train two-object training
scenes and --val two-object validation scenes (each validation scene holds a colour-shape pair
training never showed), one linear classifier per attribute (left colour, right colour, left shape,
right shape); the score is how often all four are right.

Both fit on standardised features, full batch, the same settings for every pooling.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from model.data import DatasetFormatError, ImageCaptions, load_dataset, report_skipped
from model.encoder import build_encoder
from model.features import extract_features
from model.synthetic import COLOURS, SHAPES, load_scenes
from runtime.options import POOLINGS
from runtime.vocab import tokenize

MIN_IMAGE_SHARE, MAX_IMAGE_SHARE = 0.01, 0.5


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


def words_used(train: list[ImageCaptions], val: list[ImageCaptions]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The probed words and labels [N, W]: does any caption of the photo use the word."""
    used = [[{w for c in item.captions for w in tokenize(c)} for item in items] for items in (train, val)]
    counts = Counter(w for words in used[0] for w in words)
    words = sorted(w for w, n in counts.items() if MIN_IMAGE_SHARE <= n / len(train) <= MAX_IMAGE_SHARE)
    labels = [torch.tensor([[w in image_words for w in words] for image_words in split], dtype=torch.float32)
              for split in used]
    return words, *labels


def standardised(train_x: torch.Tensor, val_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    return (train_x - mean) / std, (val_x - mean) / std


def fit(train_x: torch.Tensor, loss_of, outputs: int, steps: int = 200, weight_decay: float = 1e-3) -> torch.nn.Linear:
    torch.manual_seed(0)
    probe = torch.nn.Linear(train_x.size(1), outputs)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=weight_decay)
    for _ in range(steps):
        loss = loss_of(probe(train_x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.requires_grad_(False)


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """scores, labels [N, W] -> the mean over words with a positive of their average precision."""
    precisions = []
    for column in range(labels.size(1)):
        ranked = labels[scores[:, column].argsort(descending=True), column]  # [N], 1 where the word is used
        if ranked.sum() == 0:
            continue
        hits = ranked.cumsum(0)
        precisions.append(float((hits / torch.arange(1, len(ranked) + 1) * ranked).sum() / ranked.sum()))
    return sum(precisions) / len(precisions)


def words_probe(train_x, train_y, val_x, val_y) -> float:
    train_x, val_x = standardised(train_x, val_x)
    probe = fit(train_x, lambda logits: F.binary_cross_entropy_with_logits(logits, train_y), train_y.size(1))
    return mean_average_precision(probe(val_x), val_y)


def objects_probe(train_x, train_y, val_x, val_y) -> float:
    train_x, val_x = standardised(train_x, val_x)
    right = torch.ones(len(val_y), dtype=torch.bool)
    for column, classes in enumerate((len(COLOURS), len(COLOURS), len(SHAPES), len(SHAPES))):
        probe = fit(train_x, lambda logits: F.cross_entropy(logits, train_y[:, column]), classes)
        right &= probe(val_x).argmax(1) == val_y[:, column]
    return right.float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/probe_v.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a photo dataset, or a folder written by model.synthetic")
    parser.add_argument("--train", type=int, default=2500, help="synthetic scenes only: two-object training scenes (2500)")
    parser.add_argument("--val", type=int, default=600, help="synthetic scenes only: two-object validation scenes (600)")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="CNN feature cache (default: cache)")
    args = parser.parse_args(argv)
    try:
        dataset = load_dataset(args.data)
    except DatasetFormatError as error:
        parser.error(str(error))
    train, val = dataset.split("train"), dataset.split("val")
    if (args.data / "scenes.json").is_file():
        scenes = load_scenes(args.data)
        (train_paths, train_y), (val_paths, val_y) = (two_object_scenes(items, scenes, limit)
                                                      for items, limit in ((train, args.train), (val, args.val)))
        probe, what = objects_probe, "two-object scenes: both objects named right"
    else:
        train_paths, val_paths = [item.image_path for item in train], [item.image_path for item in val]
        words, train_y, val_y = words_used(train, val)
        probe, what = words_probe, f"photos: mean average precision of {len(words)} caption words"
    if not len(train_y) or not len(val_y):
        parser.error(f"{args.data} has nothing to probe in its train or val split")

    for n, pooling in enumerate(POOLINGS):
        encoder = build_encoder(pooling=pooling)
        table = extract_features(encoder, train_paths + val_paths, args.cache_dir)
        rows = table.rows()
        kept = [[i for i, p in enumerate(paths) if p in rows] for paths in (train_paths, val_paths)]  # unreadable: skipped
        if n == 0:
            report_skipped(table.skipped)
            print(f"{len(kept[0])} training and {len(kept[1])} validation {what}")
        train_x = table.features[[rows[train_paths[i]] for i in kept[0]]]
        val_x = table.features[[rows[val_paths[i]] for i in kept[1]]]
        score = probe(train_x, train_y[kept[0]], val_x, val_y[kept[1]])
        print(f"  {pooling + f' ({encoder.feature_dim}-d)':<28}{score:.1%}", flush=True)


if __name__ == "__main__":
    main()
