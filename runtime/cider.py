"""CIDEr-D of single captions against their references, fast enough to be a training reward.

The same formula as pycocoevalcap's Cider (which is CIDEr-D: tf-idf n-gram vectors, n = 1..4,
candidate counts clipped by the reference's, a Gaussian penalty on the length difference with
sigma 6, times 10), with two differences that self-critical training needs:
- the document frequencies come from a fixed corpus (the training references), once, as in
  Rennie et al. 2017; pycocoevalcap computes them from whatever batch it is given, so a batch of
  50 images would weigh n-grams by that batch alone;
- each image's reference vectors are computed once and kept, not again for every caption scored.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

N = 4
SIGMA = 6.0

Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]  # per n: n-gram -> weight; per n: norm; length


def ngrams(words: Sequence[str]) -> Counter:
    return Counter(tuple(words[i : i + n]) for n in range(1, N + 1) for i in range(len(words) - n + 1))


class CiderD:
    def __init__(self, corpus: Sequence[Sequence[Sequence[str]]]):
        """corpus: per image, its reference captions as word lists; fixes the document frequencies."""
        self.document_frequency = Counter(gram for refs in corpus for gram in {g for ref in refs for g in ngrams(ref)})
        self.log_images = math.log(len(corpus))
        self._references: dict[int, list[Vector]] = {}

    def _vector(self, words: Sequence[str]) -> Vector:
        weights = [{} for _ in range(N)]
        norms = [0.0] * N
        for gram, count in ngrams(words).items():
            weight = count * (self.log_images - math.log(max(1.0, self.document_frequency[gram])))
            weights[len(gram) - 1][gram] = weight
            norms[len(gram) - 1] += weight * weight
        return weights, [math.sqrt(n) for n in norms], len(words)

    def score(self, words: Sequence[str], references: Sequence[Sequence[str]], key: int | None = None) -> float:
        """CIDEr-D of one caption; with a key (the image's), its reference vectors are kept for next time."""
        refs = self._references.get(key) if key is not None else None
        if refs is None:
            refs = [self._vector(ref) for ref in references]
            if key is not None:
                self._references[key] = refs
        weights, norms, length = self._vector(words)
        total = 0.0
        for ref_weights, ref_norms, ref_length in refs:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * SIGMA**2))
            for n in range(N):
                if norms[n] and ref_norms[n]:
                    overlap = sum(min(w, ref_weights[n].get(g, 0.0)) * ref_weights[n].get(g, 0.0)
                                  for g, w in weights[n].items())
                    total += penalty * overlap / (norms[n] * ref_norms[n])
        return 10.0 * total / (N * len(refs))
