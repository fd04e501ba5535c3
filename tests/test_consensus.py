"""The consensus reranker (fitted by model.consensus, run by runtime.consensus) on photos of three
kinds, each with captions of its own."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from model.consensus import MIN_PHOTOS, fit, save
from model.decoder import Decoder, DecoderConfig
from runtime.captioner import describe
from runtime.consensus import ConsensusReranker
from runtime.decoder import ArrayStep
from runtime.options import Decoding
from runtime.vocab import Vocab, tokenize

KINDS = {
    "dog": ["a brown dog runs on the grass", "a dog is running on green grass", "the dog runs across a field"],
    "bike": ["a man rides a bike down the road", "a man riding a bike", "a cyclist rides down a road"],
    "water": ["two children play in the water", "children splash in the water", "kids playing in a pool of water"],
}
PHOTOS_PER_KIND = 5 * MIN_PHOTOS


def kind_features(kind: int, photos: int, seed: int) -> np.ndarray:
    """[photos, 16]: a direction per kind, plus noise."""
    return 4.0 * np.eye(16, dtype=np.float32)[kind] + 0.5 * np.random.default_rng(seed).standard_normal((photos, 16), np.float32)


@pytest.fixture(scope="module")
def reranker() -> ConsensusReranker:
    features = np.concatenate([kind_features(k, PHOTOS_PER_KIND, seed=k) for k in range(len(KINDS))])
    references = [[tokenize(c) for c in captions] for captions in KINDS.values() for _ in range(PHOTOS_PER_KIND)]
    return fit(features, references)


def test_only_phrases_of_many_photos_enter_its_vocabulary(reranker):
    assert ("dog",) in reranker.index and ("rides", "a", "bike") in reranker.index
    assert all(len(gram) <= 4 for gram in reranker.grams)
    assert ("a", "brown", "dog", "runs", "on") not in reranker.index


def test_a_new_photo_agrees_most_with_the_captions_of_its_kind(reranker):
    candidates = [tokenize("a dog runs on the grass"), tokenize("a man rides a bike"), tokenize("children play in the water")]
    for kind in range(len(KINDS)):
        agreement = reranker.agreement(kind_features(kind, 4, seed=100 + kind), [candidates] * 4)
        for scores in agreement:
            assert max(range(3), key=scores.__getitem__) == kind
            assert scores[kind] > 0.6


def test_rerank_weighs_agreement_against_log_probability(reranker):
    dog = kind_features(0, 1, seed=7)
    candidates = [[("a man rides a bike", -2.0), ("a dog runs on the grass", -3.0), ("zebra", -9.0)]]
    assert reranker.rerank(dog, candidates, 0.0) == candidates
    assert reranker.rerank(dog, candidates, 100.0)[0][0] == ("a dog runs on the grass", -3.0)  # log p kept as it was
    assert sorted(reranker.rerank(dog, candidates, 100.0)[0]) == sorted(candidates[0])


def test_words_it_never_saw_agree_with_nothing(reranker):
    assert reranker.agreement(kind_features(0, 1, seed=8), [[["zebra", "xylophone"], ["the"]]])[0][0] == 0.0


def test_saved_and_loaded_it_chooses_the_same(reranker, tmp_path):
    save(reranker, tmp_path / "reranker.safetensors")
    loaded = ConsensusReranker.load(tmp_path / "reranker.safetensors")
    assert loaded.grams == reranker.grams and loaded.mean_length == reranker.mean_length
    features = np.concatenate([kind_features(k, 3, seed=50 + k) for k in range(len(KINDS))])
    candidates = [[tokenize(c) for c in captions] for captions in KINDS.values() for _ in range(3)]
    for before, after in zip(reranker.agreement(features, candidates), loaded.agreement(features, candidates)):
        assert after == pytest.approx(before, abs=1e-3)  # the read-out is kept in fp16


def test_the_fp16_read_out_is_widened_to_the_same_numbers(reranker, tmp_path):
    """Loaded, the read-out stays fp16 and is widened row by row through a table: the agreements
    must be exactly those of the same read-out widened by numpy."""
    save(reranker, tmp_path / "reranker.safetensors")
    loaded = ConsensusReranker.load(tmp_path / "reranker.safetensors")
    assert loaded.weight.dtype == np.float16
    widened = ConsensusReranker(loaded.grams, np.asarray(loaded.idf), loaded.rare_idf, loaded.mean_length,
                                loaded.feature_mean, loaded.feature_std, loaded.weight.astype(np.float32))
    features = np.concatenate([kind_features(k, 3, seed=60 + k) for k in range(len(KINDS))])
    candidates = [[tokenize(c) for c in captions] for captions in KINDS.values() for _ in range(3)]
    assert loaded.agreement(features, candidates) == widened.agreement(features, candidates)


def test_the_same_reranker_saves_to_the_same_bytes(reranker, tmp_path):
    """The manifest lists the file's sha256: fitting the same reranker again must not change it."""
    for n in range(5):
        save(reranker, tmp_path / f"{n}.safetensors")
    assert len({(tmp_path / f"{n}.safetensors").read_bytes() for n in range(5)}) == 1


def test_a_file_of_the_older_layout_asks_to_be_fitted_again(reranker, tmp_path):
    save(reranker, tmp_path / "reranker.safetensors")
    older = {"grams": json.dumps([" ".join(gram) for gram in reranker.grams]), "rare_idf": repr(reranker.rare_idf),
             "mean_length": repr(reranker.mean_length)}
    save_file(load_file(tmp_path / "reranker.safetensors"), tmp_path / "reranker.safetensors", older)
    with pytest.raises(ValueError, match=r"older version of captioner: fit it again \(python -m model.fit_reranker\)"):
        ConsensusReranker.load(tmp_path / "reranker.safetensors")


def test_describe_reranks_every_finished_beam_only_when_asked(reranker):
    torch.manual_seed(0)
    vocab = Vocab.build([c for captions in KINDS.values() for c in captions], min_count=1)
    search = ArrayStep(Decoder(DecoderConfig(len(vocab), 16, 8, 16, 0.0)).frozen())
    features = kind_features(0, 2, seed=9)
    plain = describe(search, vocab, features, Decoding(beam_size=4, max_length=6), num_captions=4)
    expected = [beams[:2] for beams in reranker.rerank(features, plain, 1e6)]
    assert expected != [beams[:2] for beams in plain]  # else this test could not tell reranking from none
    assert describe(search, vocab, features, Decoding(beam_size=4, max_length=6, consensus_weight=1e6), 2, reranker) == expected
    with pytest.raises(ValueError, match="no reranker"):
        describe(search, vocab, features, Decoding(consensus_weight=1.0))
