"""Tags: what the CNN's own ImageNet classifier sees in a photo, as the words a caption would use.

The classifier head of the encoder (1,000 ImageNet classes) reads the very vector v the decoder
reads. The weights' tag map (tags.json, written by model.tag_map from WordNet) gives each class its
caption word, or none; a word's probability is the sum of its classes' softmax probabilities
("tabby", "tiger cat" and "Egyptian cat" all say "cat"), calibrated by Platt scaling
(TagCalibration, fitted by model.calibrate on training photos: the probability that a human caption
of the photo uses the word or its plural). Tags at or above the decoding's tag_threshold are shown
with every caption; with decoding.guided the first forced_tags of them must appear in the caption
(runtime.beam's constrained search), each satisfied by any of the map's words for it ("dog", "dogs",
"puppy", "terrier").
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.vocab import tokenize

TAGS_FILE = "tags.json"
MAX_TAGS = 5  # shown with a caption, best first


class TagMapError(ValueError):
    """The tag map does not fit the weights (a word outside the vocabulary, a class count the CNN lacks)."""


@dataclass(frozen=True)
class Tag:
    word: str  # what a caption would say: "cat"
    class_name: str  # the most probable ImageNet class behind it: "Egyptian cat"
    probability: float  # calibrated: how likely a human caption of the photo says the word


@dataclass(frozen=True)
class TagCalibration:
    """P(a caption says the word) = sigmoid(slope * logit(p) + intercept), p the word's summed class
    probability. The identity (1, 0) for a map never calibrated."""

    slope: float = 1.0
    intercept: float = 0.0

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(probabilities, np.float64), 1e-9, 1 - 1e-9)
        return (1 / (1 + np.exp(-(self.slope * np.log(p / (1 - p)) + self.intercept)))).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)


def word_forms(noun: str) -> tuple[str, ...]:
    """The noun and its regular plurals: what counts as a caption saying a tag's word."""
    return (noun, noun + "s", noun + "es", *([noun[:-1] + "ies"] if noun.endswith("y") else []))


def words_said(captions: list[str], words: list[str]) -> set[str]:
    """The words (tags' words) that one of the captions says, itself or in a plural."""
    tokens = {token for caption in captions for token in tokenize(caption)}
    return {word for word in words if tokens & set(word_forms(word))}


def read_tag_map(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


class Tagger:
    """The classifier head, the tag map and its calibration: features [B, D] -> tags, and the
    vocabulary ids that satisfy each forced tag."""

    def __init__(self, classifier: tuple[np.ndarray, np.ndarray], tag_map: dict, calibration: TagCalibration,
                 vocab_index: dict[str, int]):
        """classifier: the CNN's head on v, weight [C, D] and bias [C]."""
        classes = tag_map["classes"]
        self.weight, self.bias = (np.asarray(array, np.float32) for array in classifier)
        if len(classes) != len(self.weight):
            raise TagMapError(f"the tag map names {len(classes)} classes, but the CNN's classifier has {len(self.weight)}")
        self.calibration = calibration
        self.words = sorted({entry["word"] for entry in classes if entry["word"] is not None})
        missing = [word for word in self.words if word not in vocab_index]
        if missing:
            raise TagMapError(f"tag words missing from the vocabulary: {', '.join(missing[:10])}: rebuild the map for these "
                              "weights (python -m model.tag_map --weights DIR --classes imagenet_classes.tsv)")
        self.column = {word: i for i, word in enumerate(self.words)}
        self.class_names = [entry["name"] for entry in classes]
        # Classes without a word go to an extra column, dropped after summing
        self.class_to_word = np.array([self.column.get(entry["word"], len(self.words)) for entry in classes])  # [C]
        self.satisfying_ids = [[vocab_index[w] for w in tag_map["words"][word] if w in vocab_index] for word in self.words]

    def word_probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """features [B, D] -> each word's summed class probability [B, W], not calibrated, and the
        class probabilities [B, C]."""
        logits = np.asarray(features, np.float32) @ self.weight.T + self.bias  # [B, C]
        classes = np.exp(logits - logits.max(1, keepdims=True))
        classes /= classes.sum(1, keepdims=True)
        summed = np.zeros((len(classes), len(self.words) + 1), np.float32)
        for row, per_image in zip(summed, classes):
            np.add.at(row, self.class_to_word, per_image)
        return summed[:, :-1], classes

    def tags(self, features: np.ndarray, threshold: float) -> list[list[Tag]]:
        """Per image, the words whose calibrated probability reaches threshold, best first, at most MAX_TAGS."""
        summed, classes = self.word_probabilities(features)
        probabilities = self.calibration(summed)
        columns = np.argsort(-probabilities, axis=1, kind="stable")[:, :MAX_TAGS]  # [B, <= MAX_TAGS]
        return [[Tag(self.words[w], self._top_class(classes[b], w), round(float(probabilities[b, w]), 4))
                 for w in columns[b].tolist() if probabilities[b, w] >= threshold]
                for b in range(len(classes))]

    def _top_class(self, classes: np.ndarray, word: int) -> str:
        members = np.flatnonzero(self.class_to_word == word)
        return self.class_names[members[classes[members].argmax()]]

    def constraints(self, tags: list[list[Tag]], count: int) -> list[list[list[int]]]:
        """Per image, its first `count` tags as what runtime.beam must fit in: each the ids of the words that say it."""
        return [[self.satisfying_ids[self.column[tag.word]] for tag in per_image[:count]] for per_image in tags]
