"""How much better the captions of a trained decoder could get without a better image vector: two probes.

    python scripts/decoder_ceiling.py --data ../shared/data/flickr8k --weights weights runs/A/best runs/B/best
    python scripts/decoder_ceiling.py --data ../shared/data/flickr8k --weights weights --neighbours 25

Both print the dev scores of the first weights folder alone (its serving decoding) and of the probe.

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

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.captioner import Captioner, describe
from model.cider import CiderD
from model.data import DatasetFormatError, ImageCaptions, load_dataset
from model.decoder import Decoder
from model.evaluate import caption_items, print_table, readable_features, score_captions
from model.vocab import tokenize
from model.weights import WeightsError


class Ensemble(nn.Module):
    """Decoders as one for beam search: their states side by side, their word probabilities averaged."""

    def __init__(self, decoders: list[Decoder]):
        super().__init__()
        self.members = nn.ModuleList(decoders)
        self.config = decoders[0].config  # beam search reads the vocabulary size
        self.hidden_sizes = [decoder.config.hidden_dim for decoder in decoders]
        self.beam_graph = None  # beam search runs its steps in Python, through step below

    def start(self, features: torch.Tensor) -> tuple:
        """features [N, D] -> W_h h [N, sum 4H], c [N, sum H], gate terms [N, sum 4H]."""
        return tuple(torch.cat(parts, 1) for parts in zip(*(decoder.start(features) for decoder in self.members)))

    def step(self, tokens: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        recurrent, c, gates = (part.split([width * size for size in self.hidden_sizes], 1) for part, width in zip(state, (4, 1, 4)))
        outputs = [decoder.step(tokens, member) for decoder, member in zip(self.members, zip(recurrent, c, gates))]
        log_probs = torch.stack([lp for lp, _ in outputs]).logsumexp(0) - math.log(len(outputs))  # [N, V]: mean probability
        return log_probs, tuple(torch.cat(parts, 1) for parts in zip(*(member for _, member in outputs)))


def ensemble_captions(captioners: list[Captioner], features: torch.Tensor) -> list[str]:
    first = captioners[0]
    for other in captioners[1:]:
        if other.vocab.words != first.vocab.words or other.manifest["encoder"]["fingerprint"] != first.manifest["encoder"]["fingerprint"]:
            raise SystemExit(f"error: {other.model_id} differs from {first.model_id} in vocabulary or image features")
    return caption_items(Ensemble([c.decoder for c in captioners]), first.vocab, features, first.decoding, first.reranker)


def neighbour_captions(captioner: Captioner, features: torch.Tensor, train: list[ImageCaptions],
                       train_features: torch.Tensor, neighbours: int, candidates: int) -> list[str]:
    references = [[tokenize(caption) for caption in item.captions] for item in train]
    cider = CiderD(references)
    similarity = F.normalize(features.float(), dim=1) @ F.normalize(train_features.float(), dim=1).T  # [N, N_train]
    nearest = similarity.topk(neighbours, dim=1).indices.tolist()  # [N, K]
    decoding = captioner.decoding.but(beam_size=candidates, consensus_weight=0.0)  # the beams as beam search ranks them
    chosen = []
    for start in range(0, features.size(0), 256):
        beams = describe(captioner.decoder, captioner.vocab, features[start : start + 256], decoding, num_captions=candidates)
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
        captioners = [Captioner.load(folder, "cpu") for folder in args.weights]
    except (DatasetFormatError, WeightsError, FileNotFoundError) as error:
        p.exit(2, f"error: {error}\n")
    first = captioners[0]
    items, features, _ = readable_features(first.encoder, dataset.split("val"), args.cache_dir)
    references = {str(item.image_path): list(item.captions) for item in items}

    def show(title: str, captions: list[str]) -> None:
        print(f"\n{title}")
        print_table(score_captions({str(item.image_path): text for item, text in zip(items, captions)}, references))

    show(f"{first.model_id} alone", caption_items(first.decoder, first.vocab, features, first.decoding, first.reranker))
    if args.neighbours:
        train, train_features, _ = readable_features(first.encoder, dataset.split("train"), args.cache_dir)
        if args.neighbours > len(train):
            p.error(f"--neighbours {args.neighbours}: the data set has {len(train)} readable training photos")
        show(f"its {args.candidates} best beams reranked by the captions of the {args.neighbours} nearest training photos",
             neighbour_captions(first, features, train, train_features, args.neighbours, args.candidates))
    else:
        show(f"ensemble of {len(captioners)} decoders", ensemble_captions(captioners, features))


if __name__ == "__main__":
    main()
