"""Score captions with the COCO caption metrics (pycocoevalcap): BLEU-1..4, METEOR, ROUGE-L, CIDEr.

    python -m model.evaluate --weights weights --data DIR --split val --json scores.json
    python -m model.evaluate --weights weights --data DIR --split val --beam-size 5 --block-ngram 3 --set-defaults

Captions are written as the service writes them: with the decoding the weights' manifest names
(beam size, length penalty, n-gram blocking, chosen on the validation split), unless a flag
changes it. --set-defaults makes the decoding used the weights' new serving default and records the
scores in the manifest.

Both sides are tokenized with runtime.vocab.tokenize (lowercase, punctuation stripped), the same
normalisation as PTBTokenizer for plain English, without a Java process per call. METEOR needs
Java; without it the other metrics are printed and METEOR is reported as missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import cli
from runtime.options import DEVICES, PRECISIONS, SERVING_RUNTIMES


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("model.evaluate", __doc__)
    parser.add_argument("--weights", default="weights", help="trained decoder folder")
    parser.add_argument("--data", required=True, help="dataset: Flickr8k folder, COCO captions json or Karpathy json")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"), help="the split to caption and score")
    parser.add_argument("--beam-size", type=int, help="beam width (default: the weights' serving default, from their manifest)")
    parser.add_argument("--length-penalty", type=float, help="rank beams by log p / length^this (default: the weights')")
    parser.add_argument("--block-ngram", type=int, help="forbid repeating an n-gram of this size, 0 allows (default: the weights')")
    parser.add_argument("--max-length", type=int, help="most words in a caption (default: the weights')")
    parser.add_argument("--consensus-weight", type=float,
                        help="rerank the finished beams by log p + this * consensus agreement, 0: off (default: the weights'; "
                             "above 0 needs a reranker in the weights, model.fit_reranker)")
    parser.add_argument("--guided", action=argparse.BooleanOptionalAction,
                        help="make each caption say the photo's confident tags (default: the weights')")
    parser.add_argument("--tag-threshold", type=float,
                        help="calibrated probability from which a tag is shown and may be forced (default: the weights')")
    parser.add_argument("--forced-tags", type=int, help="the most tags a guided caption must say (default: the weights')")
    parser.add_argument("--state-beam-size", type=int,
                        help="beams each state of a guided search keeps, at most --beam-size; 0: the beam size (default: the weights')")
    parser.add_argument("--set-defaults", action="store_true",
                        help="record this decoding as the weights' serving default, and these scores in their manifest")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    parser.add_argument("--captions-out", type=Path, help="write image -> caption JSON here")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the decoder's search runs (auto: as the service)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="the decoder's matmuls (auto: int8 on a CPU, as the service runs it)")
    parser.add_argument("--encoder-runtime", default="auto", choices=SERVING_RUNTIMES,
                        help="what runs the exported CNN (auto: OpenVINO, else ONNX Runtime, as the service runs it)")
    return parser


if __name__ == "__main__":  # --help and mistyped flags answer now, not after seconds of importing torch
    build_parser().parse_args(sys.argv[1:])

import json
import shutil
from collections.abc import Callable

import numpy as np
from PIL import Image
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from tqdm import tqdm

from model.data import DatasetFormatError, ImageCaptions, load_dataset, report_skipped
from runtime.beam import Search
from runtime.captioner import Captioner, describe
from runtime.images import ImageRejected, decode_image
from runtime.options import Decoding
from runtime.tags import Tag, words_said
from runtime.vocab import tokenize
from runtime.weights import MANIFEST_FILE, WeightsError, verify, write_manifest

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def score_captions(predictions: dict[str, str], references: dict[str, list[str]], meteor: bool = True) -> dict:
    """predictions: id -> caption; references: id -> captions. Returns metric name -> score."""
    gts = {key: [" ".join(tokenize(ref)) for ref in references[key]] for key in predictions}
    res = {key: [" ".join(tokenize(caption)) or "<empty>"] for key, caption in predictions.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n + 1}": bleu[n] for n in range(4)}
    scores["METEOR"] = Meteor().compute_score(gts, res)[0] if meteor and shutil.which("java") else None
    scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    # Plain floats: numpy scalars would not survive JSON, nor torch.load(weights_only=True) of a checkpoint.
    return {name: None if scores[name] is None else float(scores[name]) for name in METRICS}


def caption_items(search: Search, vocab, features: np.ndarray, decoding: Decoding, reranker=None, tagger=None,
                  batch_size: int = 256) -> list[str]:
    """Best caption for each row of features [N, D], decoded in batches of images."""
    captions = []
    for start in range(0, len(features), batch_size):
        chunk = features[start:start + batch_size]
        captions += [best[0][0] for best in describe(search, vocab, chunk, decoding, reranker=reranker, tagger=tagger)]
    return captions


def served_features(captioner: Captioner, items: list[ImageCaptions], batch_size: int = 32,
                    view: Callable[[Image.Image], Image.Image] | None = None) -> tuple[list[ImageCaptions], np.ndarray, int]:
    """The items whose photos could be read, in order, and their features [N, D] as the service
    computes them: each photo's bytes decoded as an upload is (runtime.images), prepared and run
    through the exported CNN. Also how many were skipped (named on stderr). view: what of each
    decoded photo the CNN sees (scripts/compare_tag_views.py), the whole photo unless given."""
    kept, features, batch, skipped = [], [], [], []
    for item in tqdm(items, desc="features (served CNN)", unit="photo", leave=False):
        try:
            image = decode_image(item.image_path.read_bytes(), max_pixels=10**9)
            batch.append(captioner.preprocess(view(image) if view else image))
            kept.append(item)
        except (ImageRejected, OSError) as error:
            skipped.append(f"{item.image_path}: {error}")
        if len(batch) == batch_size:
            features.append(captioner.encode_pixels(np.stack(batch)))
            batch = []
    if batch:
        features.append(captioner.encode_pixels(np.stack(batch)))
    report_skipped(skipped)
    return kept, np.concatenate(features) if features else np.zeros((0, 0), np.float32), len(skipped)


def evaluate_split(
    captioner: Captioner, items: list[ImageCaptions], decoding: Decoding, meteor: bool = True
) -> tuple[dict, dict[str, str]]:
    """Scores of the captioner on `items`, captioned as the service captions them, and its caption for each image file name."""
    items, features, skipped = served_features(captioner, items)
    captions = caption_items(captioner.search, captioner.vocab, features, decoding, captioner.reranker, captioner.tagger)
    predictions = {item.image_path.name: caption for item, caption in zip(items, captions)}
    references = {item.image_path.name: list(item.captions) for item in items}
    scores = score_captions(predictions, references, meteor)
    if captioner.tagger is not None:
        scores |= tag_scores(captioner.tags(features, decoding), [item.captions for item in items], captioner.tagger.words)
    scores["n_images"] = len(items)
    scores["n_skipped"] = skipped
    return scores, predictions


def tag_scores(tags: list[list[Tag]], references: list[list[str]], words: list[str]) -> dict:
    """Tags against the photos' human captions: a tag is right when a caption says its word or the
    word's plural. Precision: the share of tags shown that are right; recall: the share of the map's
    words said in a photo's captions that its tags name."""
    shown = right = said = 0
    for per_image, captions in zip(tags, references):
        mentioned = words_said(captions, words)
        shown += len(per_image)
        right += sum(tag.word in mentioned for tag in per_image)
        said += len(mentioned)
    return {"tags_shown": shown, "tag_precision": right / shown if shown else None, "tag_recall": right / said if said else None}


def print_table(scores: dict, file=sys.stdout) -> None:
    width = max(map(len, scores), default=0)
    for name, value in scores.items():
        if value is None:  # METEOR without Java; tag precision or recall without a tag shown or said
            shown = "missing (no java)" if name == "METEOR" else "-"
        else:
            shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{name:>{width}}  {shown}", file=file)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("beam_size", "max_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("block_ngram", "state_beam_size"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more")

    try:
        dataset = load_dataset(args.data)
        captioner = Captioner.load(args.weights, args.device, args.precision, args.encoder_runtime)
    except (DatasetFormatError, WeightsError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    items = dataset.split(args.split)
    if not items:
        parser.exit(2, f"error: {dataset.why_empty(args.split)}\n")
    if not shutil.which("java"):
        print("java not found: METEOR is skipped, the other metrics are computed", file=sys.stderr)

    if args.consensus_weight is not None and args.consensus_weight < 0:
        parser.error("--consensus-weight must be 0 or more")
    if args.consensus_weight and captioner.reranker is None:
        parser.exit(2, f"error: {args.weights} has no consensus reranker: fit one with python -m model.fit_reranker\n")
    decoding = captioner.decoding.but(beam_size=args.beam_size, length_penalty=args.length_penalty,
                                      block_ngram=args.block_ngram, max_length=args.max_length,
                                      consensus_weight=args.consensus_weight, guided=args.guided,
                                      tag_threshold=args.tag_threshold, forced_tags=args.forced_tags,
                                      state_beam_size=args.state_beam_size)
    scores, predictions = evaluate_split(captioner, items, decoding)
    scores |= synthetic_scores(Path(args.data), predictions)
    shown = ", ".join(f"{name} {value}" for name, value in decoding.to_dict().items())
    print(f"{dataset.name} / {args.split} / {shown} / {captioner.model_id}")
    print_table(scores)
    if args.set_defaults:
        manifest = verify(args.weights)
        manifest["decoding"] = decoding.to_dict()
        manifest.setdefault("scores", {})[args.split] = {**scores, "split": args.split, **decoding.to_dict(),
                                                         "decoder_precision": captioner.precision,
                                                         "encoder_runtime": captioner.runtime}
        write_manifest(args.weights, manifest)
        print(f"{args.weights}: serving decoding and {args.split} scores recorded in {MANIFEST_FILE}")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2) + "\n")
    if args.captions_out:
        args.captions_out.write_text(json.dumps(predictions, indent=2) + "\n")
    return 0


def synthetic_scores(data_dir: Path, predictions: dict[str, str]) -> dict:
    """For synthetic scenes: the share of captions naming every object's colour and shape right,
    overall and by number of objects; and the share of objects named right among those whose
    colour-shape pair training held out, and among those it showed."""
    from model.synthetic import load_scenes, named_pairs, objects_named_correctly

    if not (data_dir / "scenes.json").is_file():
        return {}
    all_scenes = load_scenes(data_dir)
    captions, scenes = list(predictions.values()), [all_scenes[name] for name in predictions]
    correct = [objects_named_correctly(caption, scene) for caption, scene in zip(captions, scenes)]
    scores = {"objects_correct": _share(correct)}
    for count in sorted({len(scene["objects"]) for scene in scenes}):
        by_count = [ok for ok, scene in zip(correct, scenes) if len(scene["objects"]) == count]
        scores[f"objects_correct_{count}_object{'s' if count > 1 else ''}"] = _share(by_count)
    held_out_file = data_dir / "held_out_pairs.json"
    if held_out_file.is_file():
        held_out = {tuple(pair) for pair in json.loads(held_out_file.read_text())}
        named = {True: [], False: []}  # pair held out of training -> was each such object named right
        for caption, scene in zip(captions, scenes):
            said = named_pairs(caption)
            for obj in scene["objects"]:
                pair = (obj["colour"], obj["shape"])
                named[pair in held_out].append(pair in said)
        scores |= {"held_out_pairs_named": _share(named[True]), "seen_pairs_named": _share(named[False])}
    return scores


def _share(flags: list[bool]) -> float:
    return sum(flags) / max(len(flags), 1)


if __name__ == "__main__":
    sys.exit(main())
