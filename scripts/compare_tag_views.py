"""Which view of a photo the tags should come from: the decoder's own, or the classifier's.

    python scripts/compare_tag_views.py --weights weights --data ../shared/data/flickr8k \
        --outside ../shared/data/coco-dev/dataset_cocodev.json

The service reads its tags off the features the decoder reads: the whole photo squeezed to
224 x 224, the view the decoder was trained on (scripts/compare_fit.py). The ImageNet classifier
behind the tags was trained on another view, the centre 87.5% of a photo's shorter side (resize to
256, crop 224), and on photos that are not square or whose subject fills the middle it may read
that view better. This script tags each photo from each view, refits the tags' Platt scaling for
the view on the training photos (as model.calibrate does), and captions the validation photos
guided by those tags, the caption itself always from the decoder's view. It prints, per view:
CIDEr on both sets, the tags' precision and recall, the README's example photos' tags and guided
captions, and what the view costs a photo when it is not the decoder's (a second CNN run and its
preparation).
"""
from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from model.calibrate import fit_tags
from model.data import DatasetFormatError, load_dataset
from model.evaluate import score_captions, served_features, tag_scores
from runtime.captioner import Captioner
from runtime.tags import TagCalibration
from runtime.weights import WeightsError

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
CLASSIFIER_CROP = 0.875  # of the shorter side: ImageNet's evaluation view, 224 of 256
SHOWN_FROM = 0.1  # the example photos' tags are listed from here, those under the threshold marked


def centre_crop(image: Image.Image) -> Image.Image:
    """The square at the photo's centre, CLASSIFIER_CROP of its shorter side."""
    width, height = image.size
    side = int(min(width, height) * CLASSIFIER_CROP)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


DECODER_VIEW = "decoder's (whole photo, squeezed)"
VIEWS: dict[str, Callable[[Image.Image], Image.Image]] = {
    DECODER_VIEW: lambda image: image,
    "classifier's (centre 87.5%)": centre_crop,
}


def view_cost_ms(captioner: Captioner, image: Image.Image, view: Callable, repeats: int = 100) -> float:
    """Median milliseconds to prepare the view and run it through the CNN, one photo at a time."""
    times = []
    for _ in range(repeats + 10):
        start = time.perf_counter()
        captioner.encode([view(image)])
        times.append(time.perf_counter() - start)
    return float(np.median(times[10:]) * 1e3)


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"  # None: no tag shown, or none said


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/compare_tag_views.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="weights", help="trained decoder folder with a tag map (default: weights)")
    parser.add_argument("--data", required=True, help="Flickr8k: the training photos refit the tags' scaling, the validation ones score")
    parser.add_argument("--outside", help="photos from outside Flickr8k with captions, scored too (coco-dev's json)")
    args = parser.parse_args(argv)
    try:
        captioner = Captioner.load(args.weights, "cpu")
        datasets = [load_dataset(args.data)] + ([load_dataset(args.outside)] if args.outside else [])
    except (DatasetFormatError, WeightsError) as error:
        parser.error(str(error))
    if captioner.tagger is None:
        parser.error(f"{args.weights}: {captioner.no_tags_reason}")
    for dataset in datasets:
        if not dataset.split("val"):
            parser.error(dataset.why_empty("val"))
    decoding = captioner.decoding
    train = datasets[0].split("train")
    # per view, per scored set: the photos that could be read and their features [N, D] from that view
    scored = {view_name: {dataset.name: served_features(captioner, dataset.split("val"), view=view)[:2] for dataset in datasets}
              for view_name, view in VIEWS.items()}
    examples = sorted(EXAMPLES.glob("*.jpg"))
    example_images = [Image.open(path).convert("RGB") for path in examples]

    print(f"{captioner.model_id}, guided by the first {decoding.forced_tags} tag(s) from {decoding.tag_threshold}; "
          "captions from the decoder's view\n")
    for view_name, view in VIEWS.items():
        readable, train_features, _ = served_features(captioner, train, view=view)
        if not readable:
            parser.error(f"{args.data}: no readable training photos to fit the tags' scaling on")
        tagger = copy.copy(captioner.tagger)
        fitted = fit_tags(captioner, (readable, train_features), {})["calibration"]
        tagger.calibration = TagCalibration(**fitted)
        print(f"tags from the {view_name} view; Platt scaling refitted on {len(readable)} training photos: "
              f"slope {fitted['slope']}, intercept {fitted['intercept']}")
        for name, (items, features) in scored[view_name].items():
            tags = tagger.tags(features, decoding.tag_threshold)
            captions = [best[0][0] for best in captioner.describe(scored[DECODER_VIEW][name][1], decoding, tags=tags)]
            references = {str(i): list(item.captions) for i, item in enumerate(items)}
            scores = score_captions(dict(zip(references, captions)), references, meteor=False)
            scores |= tag_scores(tags, [item.captions for item in items], tagger.words)
            print(f"  {name}: CIDEr {scores['CIDEr']:.4f}, BLEU-4 {scores['BLEU-4']:.4f}; tags shown {scores['tags_shown']}, "
                  f"precision {share(scores['tag_precision'])}, recall {share(scores['tag_recall'])}")
        example_tags = tagger.tags(captioner.encode([view(image) for image in example_images]), SHOWN_FROM)
        forced = [[tag for tag in tags if tag.probability >= decoding.tag_threshold] for tags in example_tags]
        captions = captioner.describe(captioner.encode(example_images), decoding, tags=forced)
        for path, tags, best in zip(examples, example_tags, captions):
            shown = ", ".join(f"{tag.word} {tag.probability:.2f}" + ("" if tag.probability >= decoding.tag_threshold else " (under)")
                              for tag in tags[:3])
            print(f"  {path.stem:>14}: {shown or '-'}: {best[0][0]}")
        print(f"  preparing this view and running the CNN on it: {view_cost_ms(captioner, example_images[0], view):.1f} ms a photo "
              "(median, one at a time)\n")


if __name__ == "__main__":
    main()
