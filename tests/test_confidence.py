"""Caption confidence: the logistic fit, its threshold, and the reliability figures, on data whose answer is known."""
import math
import random

import pytest

from model.confidence import fit
from runtime.confidence import Calibration, predictors, reliability


def captions_whose_acceptability_follows(mean_log_prob_to_p, n=4000, seed=0):
    """Captions of 8 words whose chance of being acceptable is a known function of their mean log-probability."""
    rng = random.Random(seed)
    log_probs, texts, acceptable = [], [], []
    for _ in range(n):
        mean = rng.uniform(-3.0, -0.5)
        log_probs.append(mean * 9)  # 8 words and <end>
        texts.append("a dog runs on the grass with joy")
        acceptable.append(rng.random() < mean_log_prob_to_p(mean))
    return log_probs, texts, acceptable


def test_fit_recovers_a_known_calibration_and_reliability_says_so():
    truth = lambda mean: 1 / (1 + math.exp(-(3 * mean + 5)))  # noqa: E731
    log_probs, texts, acceptable = captions_whose_acceptability_follows(truth)
    calibration = fit(log_probs, texts, acceptable)
    assert predictors(log_probs[0], texts[0]) == [log_probs[0] / 9, 8.0]
    for mean in (-2.5, -1.7, -1.0):
        assert abs(calibration.confidence(mean * 9, texts[0]) - truth(mean)) < 0.05
    confidences = [calibration.confidence(lp, t) for lp, t in zip(log_probs, texts)]
    ece, table = reliability(confidences, acceptable)
    assert ece < 0.03
    assert sum(row["captions"] for row in table) == len(confidences)
    assert all(abs(row["mean_confidence"] - row["acceptable"]) < 0.1 for row in table if row["captions"] > 200)
    # The threshold splits where acceptable and unacceptable captions are best told apart: near the 50% point here.
    assert 0.25 < calibration.threshold < 0.75


def test_an_inverted_confidence_shows_as_badly_calibrated():
    log_probs, texts, acceptable = captions_whose_acceptability_follows(lambda mean: 0.0 if mean < -1.75 else 1.0)
    ece, table = reliability([0.1 if a else 0.9 for a in acceptable], acceptable)
    assert ece > 0.85 and [row["bin"] for row in table] == ["0.1-0.2", "0.9-1.0"]


def test_the_manifest_round_trip_and_uncalibrated_weights():
    calibration = Calibration((2.0, -0.1), 3.0, 0.4)
    again = Calibration.from_manifest({"confidence": {**calibration.to_dict(), "held_out": {}}})
    assert again == calibration and 0 <= again.confidence(-9.0, "a b c d e f g h") <= 1
    assert Calibration.from_manifest({}) is None


def test_the_reranker_agreement_is_a_third_predictor_when_given():
    rng = random.Random(1)
    agreements = [rng.uniform(0.0, 1.0) for _ in range(4000)]
    log_probs, texts = [-9.0] * len(agreements), ["a dog runs on the grass with joy"] * len(agreements)
    acceptable = [rng.random() < a for a in agreements]  # only the agreement tells
    with_agreement = fit(log_probs, texts, acceptable, agreements)
    assert with_agreement.uses_agreement and not fit(log_probs, texts, acceptable).uses_agreement
    assert predictors(-9.0, texts[0], 0.5) == [-1.0, 8.0, 0.5]
    assert with_agreement.confidence(-9.0, texts[0], 0.9) > 0.75 > 0.25 > with_agreement.confidence(-9.0, texts[0], 0.1)
    with pytest.raises(ValueError, match="agreement"):
        with_agreement.confidence(-9.0, texts[0])
