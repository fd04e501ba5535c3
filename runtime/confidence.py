"""How likely a caption is to be acceptable, from what the decoder itself says of it.

What "acceptable" means here, measurable from references alone: the caption's CIDEr-D against the
photo's human captions (runtime.cider, document frequencies from the training captions) reaches
ACCEPTABLE_CIDER_D. Its predictors: the caption's mean log-probability per token (the words and
<end>), its number of words and, for weights with a consensus reranker (model.consensus), the
caption's agreement with the profile predicted from the photo, an estimate of that very CIDEr-D;
through a logistic function (Platt scaling) fitted on captioned photos the decoder never trained
on. The weights' manifest keeps the fit ("confidence"), and the service reports the probability
with every caption.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

ACCEPTABLE_CIDER_D = 0.5
BINS = 10


def predictors(log_prob: float, text: str, agreement: float | None = None) -> list[float]:
    words = len(text.split())
    scored = [log_prob / (words + 1), float(words)]  # +1: the <end> token, scored too
    return scored if agreement is None else [*scored, agreement]


@dataclass(frozen=True)
class Calibration:
    weights: tuple[float, ...]  # one per predictor: three when fitted with the reranker's agreement
    bias: float
    threshold: float  # below it a caption is flagged low-confidence
    proxy: str = f"CIDEr-D >= {ACCEPTABLE_CIDER_D} against the photo's references"

    @property
    def uses_agreement(self) -> bool:
        return len(self.weights) == 3

    def confidence(self, log_prob: float, text: str, agreement: float | None = None) -> float:
        if self.uses_agreement and agreement is None:
            raise ValueError("this calibration was fitted with the reranker's agreement: give it")
        z = self.bias + sum(w * x for w, x in zip(self.weights, predictors(log_prob, text, agreement if self.uses_agreement else None)))
        return 1 / (1 + math.exp(-z))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, manifest: dict) -> Calibration | None:
        """The weights' calibration (model.calibrate --save), or None for weights without one."""
        fitted = manifest.get("confidence")
        if not fitted:
            return None
        return cls(tuple(fitted["weights"]), fitted["bias"], fitted["threshold"], fitted["proxy"])


def reliability(confidences: list[float], acceptable: list[bool]) -> tuple[float, list[dict]]:
    """Expected calibration error over BINS equal-width bins, and the table behind it."""
    table, error = [], 0.0
    for i in range(BINS):
        low, high = i / BINS, (i + 1) / BINS
        members = [(c, a) for c, a in zip(confidences, acceptable) if low <= c < high or (i == BINS - 1 and c == 1.0)]
        if not members:
            continue
        mean_confidence = sum(c for c, _ in members) / len(members)
        accuracy = sum(a for _, a in members) / len(members)
        error += len(members) / len(confidences) * abs(mean_confidence - accuracy)
        table.append({"bin": f"{low:.1f}-{high:.1f}", "captions": len(members),
                      "mean_confidence": round(mean_confidence, 3), "acceptable": round(accuracy, 3)})
    return error, table
