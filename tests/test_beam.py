import itertools

import pytest
import torch

from model.decoder import Decoder, DecoderConfig
from runtime.beam import beam_search
from runtime.decoder import ArrayStep

PAD, START, END, UNK = 0, 1, 2, 3
WORDS = (4, 5, 6)


def tiny_decoder(seed):
    torch.manual_seed(seed)
    decoder = Decoder(DecoderConfig(vocab_size=7, feature_dim=3, embed_dim=4, hidden_dim=5, dropout=0.0)).eval()
    with torch.no_grad():  # sharpen the distributions so that greedy and exhaustive differ
        decoder.out.weight.mul_(4)
    return decoder


def search(decoder, features, **kwargs):
    """runtime.beam's loop around the runtime's numpy step of the decoder; the references below step the torch decoder."""
    return beam_search(ArrayStep(decoder.frozen()), features.numpy(), **kwargs)


def sequence_log_prob(decoder, feature, words, ended):
    state = decoder.start(feature[None])
    total, previous = 0.0, START
    for word in [*words, END] if ended else words:
        log_probs, state = decoder.step(torch.tensor([previous]), state)
        total += log_probs[0, word].item()
        previous = word
    return total


def exhaustive(decoder, feature, max_length):
    """Every caption of 1..max_length words; those of max_length words may also be cut without <end>."""
    scored = []
    for n in range(1, max_length + 1):
        for words in itertools.product(WORDS, repeat=n):
            scored.append((sequence_log_prob(decoder, feature, words, True), list(words)))
            if n == max_length:
                scored.append((sequence_log_prob(decoder, feature, words, False), list(words)))
    best = {}
    for log_prob, words in sorted(scored, reverse=True):  # a cut sentence and an ended one may share words
        best.setdefault(tuple(words), log_prob)
    return sorted(((lp, list(w)) for w, lp in best.items()), reverse=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_equals_exhaustive_search(seed):
    decoder = tiny_decoder(seed)
    features = torch.randn(2, 3)
    max_length = 3
    results = search(decoder, features, start_id=START, end_id=END, banned_ids=(PAD, START, UNK),
                          beam_size=60, max_length=max_length, num_captions=5)
    for b in range(2):
        expected = exhaustive(decoder, features[b], max_length)[:5]
        got = [(h.log_prob, h.tokens) for h in results[b]]
        assert [words for _, words in got] == [words for _, words in expected]
        assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in expected], abs=1e-4)


def test_beam_size_one_is_greedy():
    decoder = tiny_decoder(3)
    features = torch.randn(4, 3)
    results = search(decoder, features, start_id=START, end_id=END, banned_ids=(PAD, START, UNK),
                          beam_size=1, max_length=6)
    for b in range(4):
        state, previous, words = decoder.start(features[b : b + 1]), START, []
        for t in range(6):
            log_probs, state = decoder.step(torch.tensor([previous]), state)
            log_probs[0, [PAD, START, UNK]] = float("-inf")
            if t == 0:
                log_probs[0, END] = float("-inf")
            previous = int(log_probs.argmax())
            if previous == END:
                break
            words.append(previous)
        assert results[b][0].tokens == words


def test_batched_equals_one_image_at_a_time():
    decoder = tiny_decoder(4)
    features = torch.randn(5, 3)
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=4, max_length=7, num_captions=3)
    together = search(decoder, features, **kwargs)
    for b in range(5):
        alone = search(decoder, features[b : b + 1], **kwargs)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[b]]
        assert [h.log_prob for h in alone] == pytest.approx([h.log_prob for h in together[b]], abs=1e-5)


def test_results_are_distinct_sorted_and_within_limits():
    decoder = tiny_decoder(5)
    results = search(decoder, torch.randn(3, 3), start_id=START, end_id=END, banned_ids=(PAD, START, UNK),
                          beam_size=5, max_length=4, num_captions=5)
    for hypotheses in results:
        assert len(hypotheses) == 5
        assert len({tuple(h.tokens) for h in hypotheses}) == 5
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
        assert all(1 <= len(h.tokens) <= 4 and set(h.tokens) <= set(WORDS) for h in hypotheses)


def test_length_penalty_favours_longer_captions():
    decoder = tiny_decoder(6)
    features = torch.randn(6, 3)
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=5, max_length=8)
    plain = search(decoder, features, **kwargs)
    normalised = search(decoder, features, length_penalty=1.0, **kwargs)
    assert sum(len(r[0].tokens) for r in normalised) >= sum(len(r[0].tokens) for r in plain)
    assert all(r[0].score > r[0].log_prob for r in normalised)  # divided by a length above 1


def test_num_captions_above_beam_size_is_refused():
    with pytest.raises(ValueError, match="num_captions"):
        search(tiny_decoder(0), torch.randn(1, 3), start_id=START, end_id=END, beam_size=2, num_captions=3)


def ngram_repeats(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_block_ngram_forbids_repeats_and_only_them(n):
    decoder = tiny_decoder(7)
    features = torch.randn(8, 3)
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=3, max_length=8, num_captions=3)
    plain = search(decoder, features, **kwargs)
    blocked = search(decoder, features, block_ngram=n, **kwargs)
    assert any(ngram_repeats(h.tokens, n) for r in plain for h in r)  # three words repeat soon: a real test
    assert not any(ngram_repeats(h.tokens, n) for r in blocked for h in r)
    for r_plain, r_blocked in zip(plain, blocked):  # a best caption with no repeat is found either way
        if not ngram_repeats(r_plain[0].tokens, n):
            assert r_blocked[0].tokens == r_plain[0].tokens


def test_block_ngram_equals_exhaustive_search_over_sentences_without_repeats():
    decoder = tiny_decoder(8)
    features = torch.randn(2, 3)
    results = search(decoder, features, start_id=START, end_id=END, banned_ids=(PAD, START, UNK),
                          beam_size=60, max_length=4, num_captions=3, block_ngram=2)
    for b in range(2):
        expected = [(lp, w) for lp, w in exhaustive(decoder, features[b], 4) if not ngram_repeats(w, 2)][:3]
        assert [h.tokens for h in results[b]] == [words for _, words in expected]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_wide_beam_returns_the_most_likely_caption_with_the_word(seed):
    """Anderson et al.'s constrained beam search, wide enough to be exact: the most likely caption
    that contains the word (or, with a set, any of its words), and both words with two constraints."""
    decoder = tiny_decoder(seed)
    features = torch.randn(3, 3)
    max_length = 3
    constraints = [[[5]], [[4, 6]], [[5], [6]]]
    results = search(decoder, features, start_id=START, end_id=END, banned_ids=(PAD, START, UNK),
                          beam_size=60, max_length=max_length, num_captions=3, constraints=constraints)
    for b, per_image in enumerate(constraints):
        allowed = [(lp, words) for lp, words in exhaustive(decoder, features[b], max_length)
                   if all(set(words) & set(needed) for needed in per_image)]
        assert [h.tokens for h in results[b]] == [words for _, words in allowed[:3]]
        assert [h.log_prob for h in results[b]] == pytest.approx([lp for lp, _ in allowed[:3]], abs=1e-4)


def test_constraints_change_only_the_images_that_have_them():
    decoder = tiny_decoder(6)
    features = torch.randn(3, 3)
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=3, max_length=5, num_captions=2)
    plain = search(decoder, features, **kwargs)
    guided = search(decoder, features, constraints=[[], [[6]], []], **kwargs)
    assert [h.tokens for h in guided[0]] == [h.tokens for h in plain[0]]
    assert [h.tokens for h in guided[2]] == [h.tokens for h in plain[2]]
    assert all(6 in h.tokens for h in guided[1])


def test_a_constraint_that_cannot_fit_gives_the_plain_caption():
    decoder = tiny_decoder(7)
    features = torch.randn(1, 3)
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=3, max_length=1)
    two_words = search(decoder, features, constraints=[[[4], [5]]], **kwargs)[0][0].tokens
    assert len(two_words) == 1 and two_words[0] in (4, 5)  # one of the two, as much as one word can hold


def test_state_beam_size_narrows_only_the_constrained_images():
    """A guided image keeps state_beam_size beams per state, and so gets at most that many
    captions, each with the word; the plain images of the same batch search as wide as before."""
    decoder = tiny_decoder(8)
    features = torch.randn(3, 3)
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=4, max_length=4, num_captions=4)
    plain = search(decoder, features, **kwargs)
    narrowed = search(decoder, features, constraints=[[], [[6]], []], state_beam_size=2, **kwargs)
    assert [[h.tokens for h in per_image] for per_image in (narrowed[0], narrowed[2])] == \
        [[h.tokens for h in per_image] for per_image in (plain[0], plain[2])]
    assert len(narrowed[1]) == 2 and all(6 in h.tokens for h in narrowed[1])
