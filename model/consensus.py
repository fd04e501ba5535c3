"""Fitting the consensus reranker (runtime.consensus) on the training photos: python -m model.fit_reranker runs it."""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from runtime.cider import ngrams
from runtime.consensus import ConsensusReranker
from runtime.files import atomic_write

MIN_PHOTOS = 10  # an n-gram enters the reranker's vocabulary when this many training photos' captions use it
RIDGE = 100.0  # the regression's L2 penalty on standardised features: mild against 6,000 photos, firm against a few dozen


def fit(features: np.ndarray, references: Sequence[Sequence[Sequence[str]]]) -> ConsensusReranker:
    """features [N, D] of the training photos; references: per photo, its captions as word lists."""
    features = np.asarray(features, np.float32)
    photos = len(references)
    frequency = Counter(gram for refs in references for gram in {g for ref in refs for g in ngrams(ref)})
    grams = sorted(gram for gram, count in frequency.items() if count >= MIN_PHOTOS)
    idf = np.array([math.log(photos / frequency[gram]) for gram in grams], np.float32)
    empty = np.empty((0, features.shape[1]), np.float32)
    reranker = ConsensusReranker(grams, idf, math.log(photos), 0.0, empty, empty, np.empty(0))  # its vocabulary, for vector()
    targets = np.zeros((photos, len(grams)), np.float32)  # [N, G]: the mean of each photo's caption vectors
    for row, refs in enumerate(references):
        for ref in refs:
            columns, values = reranker.vector(ref)
            np.add.at(targets[row], columns, np.array(values, np.float32) / len(refs))
    reranker.mean_length = sum(len(ref) for refs in references for ref in refs) / sum(map(len, references))
    reranker.feature_mean, reranker.feature_std = features.mean(0), features.std(0, ddof=1) + 1e-6
    inputs = reranker._inputs(features)  # [N, D + 1]
    penalty = RIDGE * np.eye(inputs.shape[1], dtype=np.float32)
    penalty[-1, -1] = 0.0  # the constant is not shrunk
    reranker.weight = np.ascontiguousarray(np.linalg.solve(inputs.T @ inputs + penalty, inputs.T @ targets).T)  # [G, D + 1]
    return reranker


def save(reranker: ConsensusReranker, path: Path) -> None:
    tensors = {"idf": np.array(reranker.idf, np.float32), "feature_mean": reranker.feature_mean.astype(np.float32),
               "feature_std": reranker.feature_std.astype(np.float32),
               "weight": reranker.weight.astype(np.float16)}  # fp16 halves the file; agreements move by under 1e-3 (tests)
    # One metadata key: safetensors writes several in a random order (safetensors issue 584), and the
    # manifest's sha256 of this file should not change when the same reranker is fitted again.
    metadata = {"reranker": json.dumps({"grams": [" ".join(gram) for gram in reranker.grams], "rare_idf": reranker.rare_idf,
                                        "mean_length": reranker.mean_length})}
    atomic_write(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata))
