"""How likely a caption is to be acceptable, from what the decoder itself says of it.

What "acceptable" means here, measurable from references alone: the caption's CIDEr-D against the
photo's human captions (model.cider, document frequencies from the training captions) reaches
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

import torch

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


def logistic(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Logistic regression by L-BFGS on standardised predictors x [N, P] for labels y [N]: the
    weights [P] and bias on the raw predictors' scale."""
    x, y = x.double(), y.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits((x - mean) / std @ w + b, y) + 1e-4 * w.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return (w / std).detach(), (b - (mean / std * w).sum()).item()


def fit(log_probs: list[float], texts: list[str], acceptable: list[bool],
        agreements: list[float | None] | None = None) -> Calibration:
    """Logistic regression on the predictors, then the threshold that best tells acceptable
    captions from the rest on the same data (Youden's J). Agreements of None, or none given: log p
    and length alone."""
    agreements = agreements or [None] * len(texts)
    x = torch.tensor([predictors(lp, t, a) for lp, t, a in zip(log_probs, texts, agreements)], dtype=torch.float64)  # [N, P]
    y = torch.tensor(acceptable, dtype=torch.float64)  # [N]
    weights, bias = logistic(x, y)
    probabilities = torch.sigmoid(x @ weights + bias)
    candidates = probabilities.unique()
    youden = [((probabilities >= t) & (y == 1)).sum() / (y == 1).sum().clamp_min(1)
              - ((probabilities >= t) & (y == 0)).sum() / (y == 0).sum().clamp_min(1) for t in candidates]
    threshold = candidates[int(torch.stack(youden).argmax())].item()
    return Calibration(tuple(weights.tolist()), bias, round(threshold, 4))


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
