import pytest

from runtime.vocab import SPECIALS, Vocab, tokenize


def test_tokenize_lowercases_and_strips_punctuation():
    assert tokenize("A Dog, running!  On the beach...") == ["a", "dog", "running", "on", "the", "beach"]
    assert tokenize("the dog's ball") == ["the", "dog's", "ball"]
    assert tokenize("  ") == []


def test_min_count_and_specials():
    vocab = Vocab.build(["a dog runs", "a dog sits", "a cat"], min_count=2)
    assert vocab.words[:4] == list(SPECIALS)
    assert vocab.words[4:] == ["a", "dog"]
    assert vocab.encode("a cat") == [vocab.start_id, vocab.index["a"], vocab.unk_id, vocab.end_id]


def test_round_trip_through_json(tmp_path):
    vocab = Vocab.build(["Two dogs play in the snow.", "two dogs run"], min_count=1)
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded.words == vocab.words
    ids = loaded.encode("two dogs play in the snow")
    assert loaded.decode(ids[1:]) == "two dogs play in the snow"


def test_decode_stops_at_end_and_drops_specials():
    vocab = Vocab.build(["red circle"], min_count=1)
    red, circle = vocab.index["red"], vocab.index["circle"]
    assert vocab.decode([vocab.start_id, red, vocab.pad_id, circle, vocab.end_id, red]) == "red circle"


def test_ids_are_deterministic():
    captions = ["b a c", "c b", "a"]
    assert Vocab.build(captions, 1).words == Vocab.build(list(reversed(captions)), 1).words


def test_a_vocabulary_without_the_specials_is_refused():
    with pytest.raises(ValueError, match="must start with"):
        Vocab(["dog", "cat"])
