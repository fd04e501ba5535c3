"""The int8 decoder's beam search runs as one OpenVINO graph (model.beam_graph); it must find what
model.beam's step-by-step loop finds on the same decoder, which tests/test_beam.py holds to an
exhaustive search."""
import copy

import pytest
import torch
from PIL import Image

from model.beam import beam_search
from model.beam_graph import BeamGraph
from model.captioner import Captioner
from model.decoder import Decoder, DecoderConfig
from tests.conftest import ROOT, WEIGHTS

PAD, START, END, UNK = 0, 1, 2, 3


@pytest.fixture(scope="module")
def int8_decoder():
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(vocab_size=12, feature_dim=8, embed_dim=8, hidden_dim=32, dropout=0.0)).eval()
    with torch.no_grad():  # sharp distributions over few words: sentences repeat themselves and end at different steps
        decoder.out.weight.mul_(4)
        decoder.out.bias[0] += 2  # word 0 likely where it is not banned
    return decoder.for_inference(torch.int8)


def graph_and_loop(decoder, features, **kwargs):
    kwargs = {"start_id": START, "end_id": END, **kwargs}
    graph = decoder.beam_graph
    in_graph = beam_search(decoder, features, **kwargs)
    decoder.beam_graph = None
    try:
        in_loop = beam_search(decoder, features, **kwargs)
    finally:
        decoder.beam_graph = graph
    return in_graph, in_loop


@pytest.mark.parametrize("beam_size,max_length,block_ngram,banned_ids", [
    (1, 12, 0, (PAD, START, UNK)), (3, 12, 0, (PAD, START, UNK)), (3, 12, 1, (PAD, START, UNK)), (3, 12, 2, (PAD, START, UNK)),
    (4, 12, 3, (PAD, START, UNK)), (5, 4, 2, (PAD, START, UNK)), (3, 1, 0, (PAD, START, UNK)), (8, 20, 2, (PAD, START, UNK)),
    (3, 12, 1, (START,)),  # word 0 allowed: the graph's unwritten places (-1) must not ban it
])
def test_the_graph_finds_what_the_loop_finds(int8_decoder, beam_size, max_length, block_ngram, banned_ids):
    features = torch.randn(6, 8, generator=torch.Generator().manual_seed(beam_size * 100 + max_length + block_ngram))
    for images in (features, features[:1]):  # a batch stops when its last beam ends, one image when its own does
        in_graph, in_loop = graph_and_loop(int8_decoder, images, beam_size=beam_size, max_length=max_length,
                                           num_captions=beam_size, block_ngram=block_ngram, banned_ids=banned_ids)
        assert [[h.tokens for h in image] for image in in_graph] == [[h.tokens for h in image] for image in in_loop]
        # The same int8 matmul, but the cell's sigmoid and tanh can differ by a rounding, which can move an int8 input a step
        assert ([h.log_prob for image in in_graph for h in image]
                == pytest.approx([h.log_prob for image in in_loop for h in image], abs=2e-3))


def test_no_images_get_no_captions_either_way(int8_decoder):
    assert graph_and_loop(int8_decoder, torch.zeros(0, 8), banned_ids=(PAD, START, UNK), block_ngram=2) == ([], [])


def test_the_cases_compared_above_happen(int8_decoder):
    """Beams that end before others, searches that stop before max_length, and bans that change the
    captions: without them the comparison above would not test the graph's bookkeeping."""
    features = torch.randn(6, 8, generator=torch.Generator().manual_seed(3 * 100 + 12 + 0))
    plain = beam_search(int8_decoder, features, start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=3,
                        max_length=12, num_captions=3)
    lengths = [{len(h.tokens) for h in image} for image in plain]
    assert len(set.union(*lengths)) > 2
    assert min(max(image) for image in lengths) < 12 - 1  # an image whose beams all ended two steps or more before the limit
    for n in (1, 2, 3):
        blocked = beam_search(int8_decoder, features, start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=3,
                              max_length=12, num_captions=3, block_ngram=n)
        assert [[h.tokens for h in image] for image in blocked] != [[h.tokens for h in image] for image in plain]


def test_the_graph_serves_calls_with_different_batches_and_beams_alike(int8_decoder):
    """One compiled graph takes any number of images, beams and words: a call never leaves state for the next."""
    features = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), max_length=10, block_ngram=2)
    together = beam_search(int8_decoder, features, beam_size=4, num_captions=4, **kwargs)
    beam_search(int8_decoder, features[:2], beam_size=9, num_captions=1, **kwargs)
    for b in range(5):
        alone = beam_search(int8_decoder, features[b:b + 1], beam_size=4, num_captions=4, **kwargs)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[b]]


def test_only_the_int8_decoder_gets_a_graph():
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(vocab_size=12, feature_dim=8, embed_dim=8, hidden_dim=32, dropout=0.0)).eval()
    assert decoder.beam_graph is None
    assert copy.deepcopy(decoder).for_inference(torch.float32).beam_graph is None
    assert isinstance(copy.deepcopy(decoder).for_inference(torch.int8).beam_graph, BeamGraph)


def test_with_the_shipped_weights_the_graph_writes_the_loops_captions():
    captioner = Captioner.load(WEIGHTS, device="cpu")
    assert captioner.decoder.beam_graph is not None  # int8: the default on a CPU
    photos = []
    for path in sorted((ROOT / "docs" / "examples").glob("*.jpg")):
        with Image.open(path) as photo:
            photos.append(photo.convert("RGB"))
    features = captioner.encode(photos)
    vocab = captioner.vocab
    for decoding in (captioner.decoding, captioner.decoding.but(beam_size=10, max_length=50, block_ngram=0)):
        in_graph, in_loop = graph_and_loop(captioner.decoder, features, start_id=vocab.start_id, end_id=vocab.end_id,
                                           banned_ids=(vocab.pad_id, vocab.start_id, vocab.unk_id),
                                           beam_size=decoding.beam_size, max_length=decoding.max_length,
                                           num_captions=decoding.beam_size, block_ngram=decoding.block_ngram)
        assert [[h.tokens for h in image] for image in in_graph] == [[h.tokens for h in image] for image in in_loop]


@pytest.mark.parametrize("beam_size,block_ngram", [(1, 0), (3, 0), (3, 2), (5, 3)])
def test_the_graph_finds_what_the_loop_finds_under_constraints(int8_decoder, beam_size, block_ngram):
    features = torch.randn(4, 8, generator=torch.Generator().manual_seed(beam_size + 10 * block_ngram))
    constraints = [[[5]], [], [[6, 7], [9]], [[4]]]  # one, none, two (the first a set of words), one
    in_graph, in_loop = graph_and_loop(int8_decoder, features, beam_size=beam_size, max_length=12, num_captions=beam_size,
                                       block_ngram=block_ngram, banned_ids=(PAD, START, UNK), constraints=constraints)
    assert [[h.tokens for h in image] for image in in_graph] == [[h.tokens for h in image] for image in in_loop]
    assert ([h.log_prob for image in in_graph for h in image]
            == pytest.approx([h.log_prob for image in in_loop for h in image], abs=2e-3))
    assert all(5 in h.tokens for h in in_graph[0]) and all(4 in h.tokens for h in in_graph[3])
    assert all({6, 7} & set(h.tokens) and 9 in h.tokens for h in in_graph[2])
