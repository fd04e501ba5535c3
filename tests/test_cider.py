"""runtime.cider.CiderD, the self-critical reward, against pycocoevalcap's CIDEr (which is CIDEr-D)."""
import pytest
from pycocoevalcap.cider.cider import Cider

from runtime.cider import CiderD

REFERENCES = {
    "a": ["a dog runs on the grass", "a brown dog is running through a field", "the dog runs", "a dog in a field",
          "a brown dog runs across the green grass"],
    "b": ["a man rides a bike", "a cyclist on a mountain road", "a man riding a bicycle down a hill",
          "a person on a bike", "the man is riding his bike"],
    "c": ["two children play in the snow", "kids playing in snow", "two kids throw snowballs",
          "children in winter coats play outside", "two young children play in the white snow"],
}
CANDIDATES = {"a": "a dog runs through the grass", "b": "a man rides a bike down a hill", "c": "a dog in the snow"}


def test_equals_pycocoevalcap_when_the_corpus_is_the_scored_images():
    _, expected = Cider().compute_score({k: REFERENCES[k] for k in CANDIDATES}, {k: [c] for k, c in CANDIDATES.items()})
    cider = CiderD([[ref.split() for ref in refs] for refs in REFERENCES.values()])
    got = [cider.score(CANDIDATES[k].split(), [r.split() for r in REFERENCES[k]]) for k in CANDIDATES]
    assert got == pytest.approx(list(expected), rel=1e-9)


def test_cached_references_give_the_same_score_and_a_perfect_match_scores_high():
    cider = CiderD([[ref.split() for ref in refs] for refs in REFERENCES.values()])
    refs = [r.split() for r in REFERENCES["b"]]
    first = cider.score(CANDIDATES["b"].split(), refs, key=1)
    assert cider.score(CANDIDATES["b"].split(), [], key=1) == first  # the kept references, not the ones passed
    assert cider.score("a man rides a bike".split(), refs) > first > cider.score("two kids in snow".split(), refs)
    assert cider.score([], refs) == 0.0
