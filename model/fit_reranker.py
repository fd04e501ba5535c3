"""Fit the consensus reranker (model.consensus) on a data set's training photos and add it to a weights folder.

    python -m model.fit_reranker --weights weights --data ../shared/data/flickr8k

The weights' serving decoding is left as it is: choose how much the reranker weighs, and make it the
default, with python -m model.evaluate --consensus-weight W --set-defaults. The reranker reads only
the encoder's v, so it fits in seconds once the training photos' features are cached.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runtime import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("model.fit_reranker", __doc__)
    parser.add_argument("--weights", default="weights", help="trained decoder folder; the reranker is saved into it")
    parser.add_argument("--data", required=True, help="a data set with a train split (the reranker is fitted on it)")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="feature cache folder")
    return parser


if __name__ == "__main__":  # --help answers before torch loads
    build_parser().parse_args(sys.argv[1:])

from model.consensus import MIN_PHOTOS, RIDGE, fit
from model.data import DatasetFormatError, load_dataset
from model.encoder import recorded_encoder
from model.features import readable_features
from model.weights import add_reranker
from runtime.consensus import RERANKER_FILE
from runtime.vocab import tokenize
from runtime.weights import MANIFEST_FILE, WeightsError, verify


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dataset = load_dataset(args.data)
        encoder = recorded_encoder(args.weights, verify(args.weights))
    except (DatasetFormatError, WeightsError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    train = dataset.split("train")
    if not train:
        parser.exit(2, f"error: {dataset.why_empty('train')}\n")
    started = time.monotonic()
    items, features, _ = readable_features(encoder, train, args.cache_dir)
    reranker = fit(features.numpy(), [[tokenize(caption) for caption in item.captions] for item in items])
    seconds = round(time.monotonic() - started, 1)
    add_reranker(args.weights, reranker, {"fitted_on": f"{len(items)} {dataset.name} training photos", "grams": len(reranker.grams),
                                          "min_photos": MIN_PHOTOS, "ridge": RIDGE, "seconds": seconds})
    print(f"{Path(args.weights) / RERANKER_FILE}: {len(reranker.grams)} n-grams, fitted on {len(items)} photos in {seconds} s; "
          f"listed in {MANIFEST_FILE}. Serve with it: python -m model.evaluate --weights {args.weights} "
          f"--data {args.data} --consensus-weight W --set-defaults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
