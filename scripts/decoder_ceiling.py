"""How much better the captions of a trained decoder could get without a better image vector: two probes.

    python scripts/decoder_ceiling.py --data ../shared/data/flickr8k --weights weights runs/A/best runs/B/best
    python scripts/decoder_ceiling.py --data ../shared/data/flickr8k --weights weights --neighbours 25

Both print the dev scores of the first weights folder alone (its serving decoding) and of the probe,
on the features training made (model.features), every search in fp32 (the ensemble runtime.beam's
loop around numpy steps, a decoder alone the fp32 graph): probe and decoder differ in nothing else.

Several --weights folders (decoders trained on the same CNN features with the same vocabulary, such
as docs/quality.md's ablation runs): beam search over their ensemble, each step's word probabilities
averaged. An ensemble stands in for a better-trained LSTM on the same v: if five decoders together
score little higher than one, the decoder's training is not what holds the scores back.

--neighbours K: the first decoder's --candidates best beams, of which the one that agrees most
(CIDEr-D) with the captions of the K training photos nearest to the photo in v (cosine) is kept. It
needs the training captions at decoding time, which the shipped weights do not carry (the data is
not ours to redistribute), so it is a probe, not an option of the service: it asks whether the beam
holds better captions than the one the decoder's likelihood picks.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from model.data import DatasetFormatError, ImageCaptions, load_dataset
from model.encoder import recorded_encoder
from model.evaluate import caption_items, print_table, score_captions
from model.features import readable_features
from runtime.captioner import Captioner, describe
from runtime.cider import CiderD
from runtime.decoder import ArrayStep, FrozenDecoder
from runtime.vocab import Vocab, tokenize
from runtime.weights import VOCAB_FILE, WeightsError, verify


class Ensemble:
    """Decoders as one search for runtime.beam (ArrayStep's interface): each steps its own state in
    numpy, their word probabilities averaged."""

    def __init__(self, members: list[ArrayStep]):
        self.members = members
        self.vocab_size = members[0].vocab_size

    def image_gates(self, features: np.ndarray) -> list:
        return [member.image_gates(features) for member in self.members]

    def start(self, image_gates: list, rows_per_image: int) -> list:
        return [member.start(gates, rows_per_image) for member, gates in zip(self.members, image_gates)]

    def step(self, tokens: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        outputs = [member.step(tokens, part) for member, part in zip(self.members, state)]
        log_probs = np.logaddexp.reduce([lp for lp, _ in outputs]) - math.log(len(outputs))  # [N, V]: mean probability
        return log_probs, [part for _, part in outputs]

    def select(self, state: list, rows: list[int]) -> list:
        return [member.select(part, rows) for member, part in zip(self.members, state)]


def check_ensemble(first: Captioner, others: list[Path]) -> None:
    """WeightsError unless each other folder verifies and shares the first's vocabulary and image features."""
    for folder in others:
        manifest = verify(folder)
        if Vocab.load(folder / VOCAB_FILE).words != first.vocab.words \
                or manifest["encoder"]["fingerprint"] != first.manifest["encoder"]["fingerprint"]:
            raise WeightsError(f"{manifest['model_id']} differs from {first.model_id} in vocabulary or image features")


def ensemble_captions(first: Captioner, folders: list[Path], features: np.ndarray) -> list[str]:
    """The first decoder's decoding over the ensemble of the decoders in folders (check_ensemble'd)."""
    ensemble = Ensemble([ArrayStep(FrozenDecoder.load(folder)) for folder in folders])
    return caption_items(ensemble, first.vocab, features, first.decoding, first.reranker)


def neighbour_captions(captioner: Captioner, features: np.ndarray, train: list[ImageCaptions],
                       train_features: np.ndarray, neighbours: int, candidates: int) -> list[str]:
    references = [[tokenize(caption) for caption in item.captions] for item in train]
    cider = CiderD(references)
    unit, train_unit = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (features, train_features))
    similarity = unit @ train_unit.T  # [N, N_train]: cosine
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :neighbours].tolist()  # [N, K]
    decoding = captioner.decoding.but(beam_size=candidates, consensus_weight=0.0)  # the beams as beam search ranks them
    chosen = []
    for start in range(0, len(features), 256):
        beams = describe(captioner.search, captioner.vocab, features[start : start + 256], decoding, num_captions=candidates)
        for row, texts in enumerate(beams, start):
            pool = [ref for j in nearest[row] for ref in references[j]]
            chosen.append(max((text for text, _ in texts), key=lambda text: cider.score(tokenize(text), pool)))
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(prog="python scripts/decoder_ceiling.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a Flickr8k folder (or any data set model.train reads)")
    p.add_argument("--weights", nargs="+", type=Path, default=[Path("weights")], help="weights folders; several: their ensemble")
    p.add_argument("--neighbours", type=int, default=0, help="rerank the first decoder's beams by these nearest training photos")
    p.add_argument("--candidates", type=int, default=5, help="beams reranked with --neighbours")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    args = p.parse_args()
    if (len(args.weights) > 1) == (args.neighbours > 0):
        p.error("give several --weights (an ensemble) or --neighbours K, not both")
    if args.candidates < 1:
        p.error("--candidates must be at least 1")
    try:
        dataset = load_dataset(args.data)
        first = Captioner.load(args.weights[0], "cpu", "fp32")
        check_ensemble(first, args.weights[1:])
        encoder = recorded_encoder(args.weights[0], first.manifest)
    except (DatasetFormatError, WeightsError, FileNotFoundError) as error:
        p.exit(2, f"error: {error}\n")
    items, features, _ = readable_features(encoder, dataset.split("val"), args.cache_dir)
    features = features.numpy()
    references = {str(item.image_path): list(item.captions) for item in items}

    def show(title: str, captions: list[str]) -> None:
        print(f"\n{title}")
        print_table(score_captions({str(item.image_path): text for item, text in zip(items, captions)}, references))

    show(f"{first.model_id} alone", caption_items(first.search, first.vocab, features, first.decoding, first.reranker))
    if args.neighbours:
        train, train_features, _ = readable_features(encoder, dataset.split("train"), args.cache_dir)
        if args.neighbours > len(train):
            p.error(f"--neighbours {args.neighbours}: the data set has {len(train)} readable training photos")
        show(f"its {args.candidates} best beams reranked by the captions of the {args.neighbours} nearest training photos",
             neighbour_captions(first, features, train, train_features.numpy(), args.neighbours, args.candidates))
    else:
        show(f"ensemble of {len(args.weights)} decoders", ensemble_captions(first, args.weights, features))


if __name__ == "__main__":
    main()
