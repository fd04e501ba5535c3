"""The decoder's beam search runs as one OpenVINO graph (runtime.graph); in fp32 it must find what
runtime.beam's step-by-step numpy loop (runtime.decoder.ArrayStep) finds on the same decoder, which
tests/test_beam.py holds to an exhaustive search. The int8 graph, what a CPU serves with, must
write the same captions on the shipped weights, and gives way to the fp32 graph where its layers drift."""
import pytest
import torch
from PIL import Image

from model.decoder import Decoder, DecoderConfig
from runtime.beam import beam_search
from runtime.captioner import Captioner, build_search
from runtime.decoder import ArrayStep, FrozenDecoder
from runtime.graph import BeamGraph
from tests.conftest import ROOT, WEIGHTS

PAD, START, END, UNK = 0, 1, 2, 3


@pytest.fixture(scope="module")
def frozen():
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(vocab_size=12, feature_dim=8, embed_dim=8, hidden_dim=32, dropout=0.0)).eval()
    with torch.no_grad():  # sharp distributions over few words: sentences repeat themselves and end at different steps
        decoder.out.weight.mul_(4)
        decoder.out.bias[0] += 2  # word 0 likely where it is not banned
    return decoder.frozen()


@pytest.fixture(scope="module")
def graphs(frozen):
    return {precision: BeamGraph(frozen, precision) for precision in ("int8", "fp32")}


def random_features(images, seed):
    return torch.randn(images, 8, generator=torch.Generator().manual_seed(seed)).numpy()


def graph_and_loop(graph, frozen, features, **kwargs):
    kwargs = {"start_id": START, "end_id": END, **kwargs}
    return beam_search(graph, features, **kwargs), beam_search(ArrayStep(frozen), features, **kwargs)


@pytest.mark.parametrize("beam_size,max_length,block_ngram,banned_ids", [
    (1, 12, 0, (PAD, START, UNK)), (3, 12, 0, (PAD, START, UNK)), (3, 12, 1, (PAD, START, UNK)), (3, 12, 2, (PAD, START, UNK)),
    (4, 12, 3, (PAD, START, UNK)), (5, 4, 2, (PAD, START, UNK)), (3, 1, 0, (PAD, START, UNK)), (8, 20, 2, (PAD, START, UNK)),
    (3, 12, 1, (START,)),  # word 0 allowed: the graph's unwritten places (-1) must not ban it
])
def test_the_graph_finds_what_the_loop_finds(frozen, graphs, beam_size, max_length, block_ngram, banned_ids):
    features = random_features(6, seed=beam_size * 100 + max_length + block_ngram)
    for images in (features, features[:1]):  # a batch stops when its last beam ends, one image when its own does
        in_graph, in_loop = graph_and_loop(graphs["fp32"], frozen, images, beam_size=beam_size, max_length=max_length,
                                           num_captions=beam_size, block_ngram=block_ngram, banned_ids=banned_ids)
        assert [[h.tokens for h in image] for image in in_graph] == [[h.tokens for h in image] for image in in_loop]
        # The same fp32 math, but OpenVINO's sigmoid and tanh can round otherwise than numpy's
        assert ([h.log_prob for image in in_graph for h in image]
                == pytest.approx([h.log_prob for image in in_loop for h in image], abs=1e-4))


def test_no_images_get_no_captions_either_way(frozen, graphs):
    for graph in graphs.values():
        assert graph_and_loop(graph, frozen, random_features(0, seed=0), banned_ids=(PAD, START, UNK), block_ngram=2) == ([], [])


def test_the_cases_compared_above_happen(frozen):
    """Beams that end before others, searches that stop before max_length, and bans that change the
    captions: without them the comparison above would not test the graph's bookkeeping."""
    features = random_features(6, seed=3 * 100 + 12 + 0)
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), beam_size=3, max_length=12, num_captions=3)
    plain = beam_search(ArrayStep(frozen), features, **kwargs)
    lengths = [{len(h.tokens) for h in image} for image in plain]
    assert len(set.union(*lengths)) > 2
    assert min(max(image) for image in lengths) < 12 - 1  # an image whose beams all ended two steps or more before the limit
    for n in (1, 2, 3):
        blocked = beam_search(ArrayStep(frozen), features, block_ngram=n, **kwargs)
        assert [[h.tokens for h in image] for image in blocked] != [[h.tokens for h in image] for image in plain]


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_the_graph_serves_calls_with_different_batches_and_beams_alike(graphs, precision):
    """One compiled graph takes any number of images, beams and words: a call never leaves state for the next."""
    graph = graphs[precision]
    features = random_features(5, seed=1)
    kwargs = dict(start_id=START, end_id=END, banned_ids=(PAD, START, UNK), max_length=10, block_ngram=2)
    together = beam_search(graph, features, beam_size=4, num_captions=4, **kwargs)
    beam_search(graph, features[:2], beam_size=9, num_captions=1, **kwargs)
    for b in range(5):
        alone = beam_search(graph, features[b:b + 1], beam_size=4, num_captions=4, **kwargs)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[b]]


def test_the_graph_runs_in_int8_or_fp32_and_says_which(frozen, graphs):
    assert {precision: graph.precision for precision, graph in graphs.items()} == {"int8": "int8", "fp32": "fp32"}
    with pytest.raises(ValueError, match="int8 or fp32, not 'bf16'"):
        BeamGraph(frozen, "bf16")


def outlier_decoder() -> FrozenDecoder:
    """A decoder whose image layer int8 cannot hold: each row of W_ih one weight of 1.27 and a thousand
    of +-0.0049, just under half the row's int8 step (1.27 / 127), which rounds them all to 0: about
    12% of the row's output."""
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(vocab_size=12, feature_dim=1024, embed_dim=8, hidden_dim=32, dropout=0.0)).eval()
    with torch.no_grad():
        decoder.w_image.weight.copy_(0.0049 * (torch.randint(0, 2, decoder.w_image.weight.shape) * 2 - 1))
        decoder.w_image.weight[:, 0] = 1.27
    return decoder.frozen()


def test_an_int8_graph_that_drifts_is_refused_and_the_fp32_graph_serves_instead(caplog):
    frozen = outlier_decoder()
    with pytest.raises(RuntimeError, match=r"the int8 decoder graph's image layer is .* from fp32 on 1 probe rows"):
        BeamGraph(frozen, "int8")
    search = build_search(frozen, "cpu", "auto")
    assert isinstance(search, BeamGraph) and search.precision == "fp32"
    logged = [record.message for record in caplog.records if record.message.startswith("decoder:")]
    assert len(logged) == 1
    assert logged[0].startswith("decoder: fp32 graph, not the int8 graph: RuntimeError: the int8 decoder graph's image layer is")
    features = torch.randn(3, 1024, generator=torch.Generator().manual_seed(0)).numpy()
    in_graph, in_loop = graph_and_loop(search, frozen, features, beam_size=3, max_length=8, num_captions=3,
                                       banned_ids=(PAD, START, UNK))
    assert [[h.tokens for h in image] for image in in_graph] == [[h.tokens for h in image] for image in in_loop]


def test_with_the_shipped_weights_the_graphs_write_the_loops_captions():
    """fp32: every beam word for word. int8 (the default on a CPU): the caption served for every
    example photo; lower beams may trade places, where int8 moves a log-probability by a few hundredths."""
    captioner = Captioner.load(WEIGHTS, device="cpu")
    assert isinstance(captioner.search, BeamGraph) and captioner.precision == "int8"
    frozen = FrozenDecoder.load(WEIGHTS)
    fp32 = BeamGraph(frozen, "fp32")
    photos = []
    for path in sorted((ROOT / "docs" / "examples").glob("*.jpg")):
        with Image.open(path) as photo:
            photos.append(photo.convert("RGB"))
    features = captioner.encode(photos)
    vocab = captioner.vocab
    for decoding in (captioner.decoding, captioner.decoding.but(beam_size=10, max_length=50, block_ngram=0)):
        kwargs = dict(start_id=vocab.start_id, end_id=vocab.end_id, banned_ids=(vocab.pad_id, vocab.start_id, vocab.unk_id),
                      beam_size=decoding.beam_size, max_length=decoding.max_length, num_captions=decoding.beam_size,
                      block_ngram=decoding.block_ngram)
        in_fp32, in_loop = graph_and_loop(fp32, frozen, features, **kwargs)
        assert [[h.tokens for h in image] for image in in_fp32] == [[h.tokens for h in image] for image in in_loop]
        in_int8 = beam_search(captioner.search, features, **kwargs)
        assert [image[0].tokens for image in in_int8] == [image[0].tokens for image in in_loop]
        assert [image[0].log_prob for image in in_int8] == pytest.approx([image[0].log_prob for image in in_loop], abs=0.2)


@pytest.mark.parametrize("beam_size,block_ngram", [(1, 0), (3, 0), (3, 2), (5, 3)])
def test_the_graph_finds_what_the_loop_finds_under_constraints(frozen, graphs, beam_size, block_ngram):
    features = random_features(4, seed=beam_size + 10 * block_ngram)
    constraints = [[[5]], [], [[6, 7], [9]], [[4]]]  # one, none, two (the first a set of words), one
    in_graph, in_loop = graph_and_loop(graphs["fp32"], frozen, features, beam_size=beam_size, max_length=12,
                                       num_captions=beam_size, block_ngram=block_ngram, banned_ids=(PAD, START, UNK),
                                       constraints=constraints)
    assert [[h.tokens for h in image] for image in in_graph] == [[h.tokens for h in image] for image in in_loop]
    assert ([h.log_prob for image in in_graph for h in image]
            == pytest.approx([h.log_prob for image in in_loop for h in image], abs=1e-4))
    assert all(5 in h.tokens for h in in_graph[0]) and all(4 in h.tokens for h in in_graph[3])
    assert all({6, 7} & set(h.tokens) and 9 in h.tokens for h in in_graph[2])
