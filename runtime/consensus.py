"""Consensus reranking: of the beam's captions, keep the one the photo's describers would agree with most.

Fitted by python -m model.fit_reranker (model.consensus).

Beam search ranks captions by the decoder's likelihood, which favours the safest phrasing; people
describing a photo agree on its salient words and phrases, and CIDEr scores exactly that agreement.
The reranker predicts, from the image vector v alone, what the photo's human captions would say: a
ridge regression from v to the mean of their CIDEr-D tf-idf vectors (n-grams of 1 to 4 words, each n
normalised), fitted once on the training photos. A caption's agreement with the prediction is
CIDEr-D's own (the sum over n of the dot products of normalised vectors, times its Gaussian length
penalty against the mean training caption length); the caption kept maximises
log p + consensus_weight * agreement among the beam_size finished beams (Decoding.consensus_weight;
0 keeps beam search's order and needs no reranker).

Its vocabulary is the n-grams used in the captions of at least MIN_PHOTOS training photos: common
phrases such as "a dog runs through", never a whole caption of the data set. It is saved beside the
decoder (RERANKER_FILE, listed in the manifest) and depends only on the encoder's v, not on the
decoder: a retrained decoder on the same encoder can keep it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.cider import N, SIGMA, ngrams
from runtime.vocab import tokenize

RERANKER_FILE = "reranker.safetensors"
# The read-out is stored in float16. numpy widens float16 one value at a time (about 4 ns each on the
# EPYC, 0.25-0.5 ms for the rows one photo's candidates use); looked up by bit pattern in this table
# the same values come 4-5 times faster.
FLOAT16_TO_32 = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)


class ConsensusReranker:
    def __init__(self, grams: list[tuple[str, ...]], idf: np.ndarray, rare_idf: float, mean_length: float,
                 feature_mean: np.ndarray, feature_std: np.ndarray, weight: np.ndarray):
        self.grams = grams
        self.index = {gram: j for j, gram in enumerate(grams)}
        self.idf = idf.tolist()  # [G]
        self.rare_idf = rare_idf  # the idf of an n-gram outside the vocabulary: that of one seen in a single photo
        self.mean_length = mean_length
        self.feature_mean, self.feature_std = feature_mean, feature_std  # [D], [D]
        self.weight = weight  # [G, D + 1]: each n-gram's read-out from the standardised v and a constant

    def _inputs(self, features: np.ndarray) -> np.ndarray:
        """[B, D] -> [B, D + 1]: standardised, with a constant column."""
        standardised = (np.asarray(features, np.float32) - self.feature_mean) / self.feature_std
        return np.concatenate([standardised, np.ones((len(standardised), 1), np.float32)], 1)

    def vector(self, words: Sequence[str]) -> tuple[list[int], list[float]]:
        """CIDEr-D's tf-idf vector of a caption, each n normalised, as (columns, values) over the vocabulary."""
        weights = [dict() for _ in range(N)]
        for gram, count in ngrams(words).items():
            j = self.index.get(gram)
            weights[len(gram) - 1][j if j is not None else gram] = count * (self.idf[j] if j is not None else self.rare_idf)
        columns, values = [], []
        for per_n in weights:
            norm = math.sqrt(sum(w * w for w in per_n.values()))
            for key, w in per_n.items():
                if isinstance(key, int) and norm:  # norm 0: only n-grams that every photo's captions use
                    columns.append(key)
                    values.append(w / norm)
        return columns, values

    def agreement(self, features: np.ndarray, captions: Sequence[Sequence[Sequence[str]]]) -> list[list[float]]:
        """features [B, D]; captions: per image, its candidates as word lists -> per image, each one's agreement."""
        inputs = self._inputs(features)  # [B, D + 1]
        scores = []
        for row, candidates in zip(inputs, captions):
            vectors = [self.vector(words) for words in candidates]
            needed = sorted({j for columns, _ in vectors for j in columns})
            predicted = dict(zip(needed, (self._rows(needed) @ row).tolist()))  # only the columns the candidates use
            scores.append([
                sum(v * predicted[j] for j, v in zip(columns, values))
                * math.exp(-((len(words) - self.mean_length) ** 2) / (2 * SIGMA**2))
                for (columns, values), words in zip(vectors, candidates)
            ])
        return scores

    def _rows(self, needed: list[int]) -> np.ndarray:
        """The read-out's rows for these n-grams, in float32 [len(needed), D + 1]."""
        rows = self.weight[needed]
        return FLOAT16_TO_32[rows.view(np.uint16)] if rows.dtype == np.float16 else rows.astype(np.float32, copy=False)

    def rerank(self, features: np.ndarray, captions: list[list[tuple[str, float]]], weight: float) -> list[list[tuple[str, float]]]:
        """features [B, D]; captions: per image, (text, log p) candidates -> the same, best first by
        log p + weight * agreement."""
        agreements = self.agreement(features, [[tokenize(text) for text, _ in candidates] for candidates in captions])
        return [[candidate for _, candidate in sorted(zip(scores, candidates), key=lambda pair: -(pair[1][1] + weight * pair[0]))]
                for scores, candidates in zip(agreements, captions)]

    @classmethod
    def load(cls, path: Path) -> ConsensusReranker:
        from safetensors import safe_open

        with safe_open(path, "np") as f:
            metadata = f.metadata() or {}
            if "reranker" not in metadata:
                raise ValueError(f"{path} was written by an older version of captioner: fit it again (python -m model.fit_reranker)")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        fields = json.loads(metadata["reranker"])
        return cls([tuple(gram.split(" ")) for gram in fields["grams"]], tensors["idf"], fields["rare_idf"], fields["mean_length"],
                   tensors["feature_mean"], tensors["feature_std"], tensors["weight"])
