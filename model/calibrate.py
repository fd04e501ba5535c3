"""Fit how confident the service says each caption is, on captioned photos the decoder never trained on,
and how likely each tag is to be said by a person describing the photo.

    python -m model.calibrate --weights weights --data ../shared/data/flickr8k            # fit and report
    python -m model.calibrate --weights weights --data ../shared/data/flickr8k --save     # and keep it

The validation photos, sorted by name, are split in two halves, alternately. Each photo gets its
caption with the weights' serving decoding; a caption counts as acceptable when its CIDEr-D against
the photo's human captions reaches runtime.confidence.ACCEPTABLE_CIDER_D. The logistic fit and the
low-confidence threshold come from the first half; the second half measures them: the expected
calibration error, a reliability table, and how many captions are flagged. Images unlike any
training photo (blank frames, noise, a screenshot of text; made here) show how often they are
flagged.

Tags (weights with a tag map, runtime.tags): Platt scaling of each word's summed class probability,
fitted on the training photos (the CNN's classifier never saw them) for every word of at least
MIN_TAG_PROBABILITY, a word counting as said when one of the photo's human captions has it or its
plural; measured on the validation photos, and on --tags-held-out's photos too when given (for
example COCO photos, from outside the training data's world): the expected calibration error and
a reliability table.

--save writes both fits and these figures into the weights' manifest ("confidence" and
"tags.calibration"), which the service reads at start.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("model.calibrate", __doc__)
    parser.add_argument("--weights", default="weights", help="trained decoder folder")
    parser.add_argument("--data", required=True, help="a data set with a validation split (and a train split for CIDEr-D's document frequencies)")
    parser.add_argument("--save", action="store_true", help="record the fit and its figures in the weights' manifest")
    parser.add_argument("--tags-held-out", help="another data set whose validation photos measure the tags' calibration")
    return parser


if __name__ == "__main__":  # --help answers before torch loads
    build_parser().parse_args(sys.argv[1:])

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.confidence import fit, logistic
from model.data import DatasetFormatError, ImageCaptions, load_dataset
from model.evaluate import served_features
from runtime.captioner import Captioner
from runtime.cider import CiderD
from runtime.confidence import ACCEPTABLE_CIDER_D, reliability
from runtime.tags import TagCalibration, words_said
from runtime.vocab import tokenize
from runtime.weights import MANIFEST_FILE, WeightsError, read_manifest, write_manifest

MIN_TAG_PROBABILITY = 0.01  # below it a word is never near being shown: its pairs would only swamp the fit


Photos = tuple[list[ImageCaptions], np.ndarray]  # photos that could be read, and their features [N, D] (served_features)


def tag_pairs(captioner: Captioner, photos: Photos) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (photo, word) of summed probability >= MIN_TAG_PROBABILITY: that probability [N], and
    whether a human caption of the photo says the word [N]."""
    items, features = photos
    summed = torch.from_numpy(captioner.tagger.word_probabilities(features)[0])  # [B, W]
    words = captioner.tagger.words
    said = torch.tensor([[word in spoken for word in words] for spoken in (words_said(item.captions, words) for item in items)],
                        dtype=torch.bool)  # [B, W]
    kept = summed >= MIN_TAG_PROBABILITY
    return summed[kept], said[kept]


def fit_tags(captioner: Captioner, train: Photos, held_out: dict[str, Photos]) -> dict:
    """The tags' Platt scaling, fitted on `train`, and its reliability on each held-out set."""
    probabilities, said = tag_pairs(captioner, train)
    logits = torch.logit(probabilities.double().clamp(1e-9, 1 - 1e-9))
    weights, bias = logistic(logits[:, None], said)
    calibration = TagCalibration(round(weights.item(), 4), round(bias, 4))
    report = {"calibration": calibration.to_dict(),
              "fitted_on": f"{len(train[0])} training photos, {len(said)} (photo, word) pairs of summed probability >= "
                           f"{MIN_TAG_PROBABILITY}; a word is right when a human caption says it or its plural",
              "held_out": {}}
    for name, photos in held_out.items():
        probabilities, said = tag_pairs(captioner, photos)
        ece, bins = reliability(calibration(probabilities.numpy()).tolist(), said.tolist())
        report["held_out"][name] = {"photos": len(photos[0]), "pairs": len(said), "expected_calibration_error": round(ece, 4),
                                    "reliability": bins}
    return report


def unlike_photos() -> dict[str, list[Image.Image]]:
    """Images no Flickr8k caption describes: 12 of each kind, made here from a fixed seed."""
    rng = np.random.default_rng(0)
    blank = [Image.new("RGB", (400, 300), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(12)]
    noise = [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) for _ in range(12)]
    text = []
    for n in range(12):
        page = Image.new("RGB", (400, 300), "white")
        draw = ImageDraw.Draw(page)
        for line in range(14):
            draw.text((10, 8 + 20 * line), " ".join(f"word{(n * 31 + line * 7 + k) % 97}" for k in range(6)), fill="black")
        text.append(page)
    return {"blank frame": blank, "noise": noise, "screenshot of text": text}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        dataset = load_dataset(args.data)
        captioner = Captioner.load(args.weights)
    except (DatasetFormatError, WeightsError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    val, train = dataset.split("val"), dataset.split("train")
    if not val or not train:
        parser.exit(2, f"error: {dataset.why_empty('val' if not val else 'train')}\n")

    val = sorted(val, key=lambda item: item.image_path.name)
    items, features, _ = served_features(captioner, val)
    described = captioner.describe(features)
    captions = [best[0] for best in described]
    agreements = [best[0] for best in captioner.agreements(features, described)]  # None each without a reranker
    cider = CiderD([[tokenize(c) for c in item.captions] for item in train])
    acceptable = [cider.score(tokenize(text), [tokenize(c) for c in item.captions]) >= ACCEPTABLE_CIDER_D
                  for (text, _), item in zip(captions, items)]
    halves = [list(range(0, len(items), 2)), list(range(1, len(items), 2))]
    fitted = fit([captions[i][1] for i in halves[0]], [captions[i][0] for i in halves[0]], [acceptable[i] for i in halves[0]],
                 [agreements[i] for i in halves[0]])

    held_out = [fitted.confidence(captions[i][1], captions[i][0], agreements[i]) for i in halves[1]]
    truth = [acceptable[i] for i in halves[1]]
    ece, bins = reliability(held_out, truth)
    flagged = [c < fitted.threshold for c in held_out]
    unacceptable_flagged = sum(f and not t for f, t in zip(flagged, truth)) / max(1, truth.count(False))
    acceptable_flagged = sum(f and t for f, t in zip(flagged, truth)) / max(1, truth.count(True))
    unlike = {}
    for kind, images in unlike_photos().items():
        unlike_features = captioner.encode(images)
        said = captioner.describe(unlike_features)
        confidences = [fitted.confidence(best[0][1], best[0][0], agreement[0])
                       for best, agreement in zip(said, captioner.agreements(unlike_features, said))]
        unlike[kind] = {"images": len(images), "flagged": sum(c < fitted.threshold for c in confidences) / len(images),
                        "example": said[0][0][0]}

    confidence = {
        **fitted.to_dict(),
        "fitted_on": f"{len(halves[0])} validation photos (every other one, sorted by name)",
        "held_out": {"photos": len(halves[1]), "acceptable": round(sum(truth) / len(truth), 3),
                     "expected_calibration_error": round(ece, 4), "flagged": round(sum(flagged) / len(flagged), 3),
                     "unacceptable_flagged": round(unacceptable_flagged, 3), "acceptable_flagged": round(acceptable_flagged, 3),
                     "reliability": bins},
        "unlike_photos_flagged": unlike,
    }
    print(json.dumps(confidence, indent=2))
    tags = None
    if captioner.tagger is not None:
        held_out = {dataset.name: (items, features)}  # the validation photos, read once above
        if args.tags_held_out:
            other = load_dataset(args.tags_held_out)
            held_out[other.name] = served_features(captioner, other.split("val"))[:2]
        tags = fit_tags(captioner, served_features(captioner, train)[:2], held_out)
        print(json.dumps(tags, indent=2))
    if args.save:
        manifest = read_manifest(args.weights)
        manifest["confidence"] = confidence
        if tags is not None:
            manifest["tags"] = {**manifest.get("tags", {}), **tags}
        write_manifest(args.weights, manifest)
        print(f"saved in {Path(args.weights) / MANIFEST_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
