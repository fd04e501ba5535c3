"""Squeeze, crop or pad: how the service should make a photo square, measured on the validation split.

    python scripts/compare_fit.py --weights weights --data ../shared/data/flickr8k

The shared Flickr8k photos were squeezed to 224 x 224 from their original shapes (mostly about
500 x 375), and a user's photo keeps its own shape. To ask what each way of making a photo square
costs, each validation photo is first stretched back to a typical original shape (4:3 landscape,
and 3:4 portrait), then prepared each way (runtime.preprocess.FITS), run through the served CNN
and captioned with the weights' decoding. The first row, the photo as stored, is what the decoder
was validated on.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.data import DatasetFormatError, load_dataset
from model.evaluate import caption_items, score_captions
from runtime.captioner import Captioner
from runtime.preprocess import FITS, Preprocessing
from runtime.weights import WeightsError

SHAPES = {"as stored (224 x 224)": None, "4:3 landscape (299 x 224)": (299, 224), "3:4 portrait (224 x 299)": (224, 299)}


def features_of(captioner: Captioner, preprocessing: Preprocessing, photos: list[Path], shape: tuple[int, int] | None,
                batch_size: int = 32) -> np.ndarray:
    """The served CNN's features [N, D] of the photos, stretched to shape (None: as stored), prepared by preprocessing."""
    rows = []
    for start in tqdm(range(0, len(photos), batch_size), desc=f"{preprocessing.fit}, {shape}", leave=False):
        pixels = []
        for path in photos[start : start + batch_size]:
            with Image.open(path) as image:
                image = image.convert("RGB")
                pixels.append(preprocessing.pixels(image.resize(shape, Image.Resampling.BICUBIC) if shape else image))
        rows.append(captioner.encode_pixels(np.stack(pixels)))
    return np.concatenate(rows)  # [N, D]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/compare_fit.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights", help="trained decoder folder (default: weights)")
    parser.add_argument("--data", required=True, help="a photo dataset with a validation split")
    parser.add_argument("--limit", type=int, default=1000, help="validation photos used (default 1000)")
    args = parser.parse_args(argv)
    try:
        captioner = Captioner.load(args.weights, "cpu")
        items = load_dataset(args.data).split("val")[: args.limit]
    except (DatasetFormatError, WeightsError) as error:
        parser.error(str(error))
    photos = [item.image_path for item in items]
    references = {str(p): list(item.captions) for p, item in zip(photos, items)}
    served = captioner.preprocessing

    print(f"{len(items)} validation photos, {captioner.model_id}, decoding {captioner.decoding.to_dict()}")
    print(f"{'photo shape':<28}{'fit':<9}{'BLEU-4':>8}{'METEOR':>8}{'CIDEr':>8}")
    for shape_name, shape in SHAPES.items():
        for fit in FITS if shape else [served.fit]:
            features = features_of(captioner, replace(served, fit=fit), photos, shape)
            captions = caption_items(captioner.search, captioner.vocab, features, captioner.decoding, captioner.reranker)
            scores = score_captions({str(p): c for p, c in zip(photos, captions)}, references)
            meteor = f"{scores['METEOR']:8.4f}" if scores["METEOR"] is not None else f"{'-':>8}"
            print(f"{shape_name:<28}{fit:<9}{scores['BLEU-4']:8.4f}{meteor}{scores['CIDEr']:8.4f}", flush=True)


if __name__ == "__main__":
    main()
