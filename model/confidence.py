"""Fitting the caption confidence (runtime.confidence) on captioned photos: model.calibrate runs it."""
from __future__ import annotations

import torch

from runtime.confidence import Calibration, predictors


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
