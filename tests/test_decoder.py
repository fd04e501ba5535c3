import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.decoder import Decoder, DecoderConfig
from model.weights import save_weights
from runtime.beam import beam_search
from runtime.decoder import ArrayStep, FrozenDecoder, quantize
from runtime.gpu import torch_step
from runtime.vocab import Vocab

PAD, START, END = 0, 1, 2


def tiny_decoder(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return Decoder(DecoderConfig(vocab_size=9, feature_dim=6, embed_dim=4, hidden_dim=5, dropout=dropout)).eval()


def test_shapes():
    decoder = tiny_decoder()
    tokens = torch.tensor([[START, 4, 5, END, PAD], [START, 6, 7, 8, END]])
    features = torch.randn(2, 6)
    assert decoder.hidden_states(features, tokens).shape == (2, 4, 5)
    assert decoder(features, tokens).shape == ()


def test_loss_is_cross_entropy_over_the_real_targets():
    decoder = tiny_decoder()
    tokens = torch.tensor([[START, 4, 5, END, PAD], [START, 6, 7, 8, END]])
    features = torch.randn(2, 6)
    logits = decoder.out(decoder.hidden_states(features, tokens))  # [2, 4, 9], padding included
    expected = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD)
    assert torch.allclose(decoder(features, tokens), expected, atol=1e-6)


def test_caption_weights_set_each_captions_share_of_the_loss():
    decoder = tiny_decoder()
    tokens = torch.tensor([[START, 4, 5, END, PAD], [START, 6, 7, 8, END]])
    features = torch.randn(2, 6)
    assert torch.allclose(decoder(features, tokens, weights=torch.ones(2)), decoder(features, tokens), atol=1e-6)
    assert torch.allclose(decoder(features, tokens, weights=torch.tensor([1.0, 0.0])), decoder(features[:1], tokens[:1, :4]),
                          atol=1e-6)
    doubled = decoder(features[[0, 0, 1]], tokens[[0, 0, 1]])  # weight 2: as if the first caption came twice
    assert torch.allclose(decoder(features, tokens, weights=torch.tensor([2.0, 1.0])), doubled, atol=1e-6)


def test_stepwise_decoding_matches_teacher_forcing():
    """The teacher-forced loop (training) and the one-step path (beam search) compute the same model."""
    decoder = tiny_decoder()
    features = torch.randn(2, 6)
    tokens = torch.tensor([[START, 4, 5, END, PAD], [START, 6, 7, 8, END]])
    forced = decoder.out(decoder.hidden_states(features, tokens)).log_softmax(-1)  # [2, 4, 9]
    real_targets = tokens[:, 1:] != PAD  # [2, 4]
    state = decoder.start(features)
    for t in range(4):
        step_log_probs, state = decoder.step(tokens[:, t], state)
        rows = real_targets[:, t]
        assert torch.allclose(step_log_probs[rows], forced[rows, t], atol=1e-5)


def test_image_vector_enters_every_step():
    """Changing v changes the prediction at a late step even with the same words before it."""
    decoder = tiny_decoder()
    tokens = torch.tensor([[START, 4, 5, 6, 7, END]])
    a = decoder.hidden_states(torch.zeros(1, 6), tokens)[0, -1]
    b = decoder.hidden_states(torch.ones(1, 6), tokens)[0, -1]
    assert not torch.allclose(a, b)


def test_padding_does_not_change_the_real_positions():
    decoder = tiny_decoder()
    features = torch.randn(1, 6)
    short = torch.tensor([[START, 4, 5, END]])
    padded = torch.tensor([[START, 4, 5, END, PAD, PAD]])
    assert torch.allclose(decoder.hidden_states(features, short), decoder.hidden_states(features, padded)[:, :3], atol=1e-6)


def test_loss_ignores_pad_targets():
    decoder = tiny_decoder()
    features = torch.randn(1, 6)
    short = torch.tensor([[START, 4, 5, END]])
    padded = torch.tensor([[START, 4, 5, END, PAD, PAD]])
    assert torch.allclose(decoder(features, short), decoder(features, padded), atol=1e-6)


def test_loss_falls_when_fitting_one_caption():
    decoder = tiny_decoder().train()
    features = torch.randn(1, 6)
    tokens = torch.tensor([[START, 4, 5, 6, END]])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = decoder(features, tokens)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 10


def stepwise_log_probs(decoder, features, tokens):
    state, out = decoder.start(features), []
    for t in range(tokens.size(1)):
        log_probs, state = decoder.step(tokens[:, t], state)
        out.append(log_probs)
    return torch.stack(out, dim=1), state  # [B, T, V]


def test_the_frozen_decoder_steps_as_the_torch_decoder():
    """The runtime's step (runtime.decoder: W_x folded into the word table, W_h stacked on the output
    layer, numpy) computes the trained model."""
    decoder = tiny_decoder()
    features, tokens = torch.randn(2, 6), torch.tensor([[START, 4, 5, END], [START, 6, 7, 8]])
    frozen = decoder.frozen()
    assert frozen.word_gates.shape == (9, 4 * 5) and frozen.stacked.shape == (4 * 5 + 9, 5)
    assert (frozen.vocab_size, frozen.hidden_dim, frozen.end_of_recurrent) == (9, 5, 4 * 5)
    step = ArrayStep(frozen)
    assert step.precision == "fp32"
    with torch.no_grad():
        expected, (_, torch_c, _) = stepwise_log_probs(decoder, features, tokens)
    state = step.start(step.image_gates(features.numpy()), 1)
    for t in range(tokens.size(1)):
        log_probs, state = step.step(tokens[:, t].numpy(), state)
        assert log_probs.dtype == np.float32
        np.testing.assert_allclose(log_probs, expected[:, t].numpy(), atol=1e-5)
    np.testing.assert_allclose(state[1], torch_c.numpy(), atol=1e-5)


def test_the_runtime_reads_the_decoder_that_save_weights_wrote(tmp_path):
    decoder = tiny_decoder()
    vocab = Vocab.build(["a b c d e"], min_count=1)
    assert len(vocab) == decoder.config.vocab_size
    save_weights(tmp_path, decoder, vocab, {})
    loaded, frozen = FrozenDecoder.load(tmp_path), decoder.frozen()
    for name in ("word_gates", "image_weight", "image_bias", "stacked", "stacked_bias"):
        assert np.array_equal(getattr(loaded, name), getattr(frozen, name)), name
    assert loaded.end_of_recurrent == frozen.end_of_recurrent


def test_quantize_round_trips_within_one_scale_step():
    generator = np.random.default_rng(0)
    rows = generator.standard_normal((7, 64)) * np.logspace(-3, 2, 7)[:, None]  # rows of very different sizes
    weight = rows.astype(np.float32)
    weight[3] = 0.0
    quantized, scale = quantize(weight)
    assert quantized.dtype == np.int8 and quantized.shape == weight.shape and scale.shape == (7, 1)
    assert (np.abs(quantized * scale - weight) <= scale / 2 * (1 + 1e-5)).all()  # each weight rounded to its row's nearest step
    assert np.abs(quantized).max(1).tolist() == [127, 127, 127, 0, 127, 127, 127]  # each row's largest weight at 127
    assert not np.array_equal(quantized * scale, weight)  # the weights were rounded


def test_bf16_steps_keep_the_cell_and_the_log_probs_in_fp32():
    decoder = tiny_decoder()
    features, tokens = torch.randn(2, 6), torch.tensor([[START, 4, 5, END], [START, 6, 7, 8]])
    with torch.no_grad():
        expected, _ = stepwise_log_probs(decoder, features, tokens)
    step = torch_step(decoder.frozen(), "cpu", "bf16")
    assert step.precision == "bf16" and step.stacked_t.dtype == torch.bfloat16
    state, log_probs = step.start(step.image_gates(features.numpy()), 1), []
    for t in range(tokens.size(1)):
        scores, state = step.step(tokens[:, t].numpy(), state)
        log_probs.append(scores)
    log_probs = np.stack(log_probs, 1)  # [B, T, V]
    assert log_probs.dtype == np.float32 and state[0].dtype == state[1].dtype == torch.float32
    np.testing.assert_allclose(log_probs, expected.numpy(), atol=0.05)
    assert not np.allclose(log_probs, expected.numpy(), atol=1e-6)  # it did run in bf16


def sample(decoder, features, greedy, max_length=6):
    return decoder.sample(features, start_id=START, end_id=END, banned_ids=[PAD, START, 3], max_length=max_length,
                          greedy=greedy)


def test_greedy_sample_is_beam_search_of_width_one():
    decoder = tiny_decoder(seed=1)
    features = torch.randn(6, 6)
    with torch.no_grad():
        words, _ = sample(decoder, features, greedy=True)
    beams = beam_search(ArrayStep(decoder.frozen()), features.numpy(), start_id=START, end_id=END, banned_ids=(PAD, START, 3),
                        beam_size=1, max_length=6)
    for row, hypotheses in zip(words.tolist(), beams):
        sentence = row[: row.index(END)] if END in row else row
        assert sentence == hypotheses[0].tokens


def test_sampled_log_probs_are_the_decoders_and_stop_at_end():
    decoder = tiny_decoder(seed=2)
    features = torch.randn(32, 6)
    torch.manual_seed(0)
    words, log_probs = sample(decoder, features, greedy=False)  # [32, T]
    assert words.shape == log_probs.shape and words.size(1) <= 7
    for row in range(32):
        sentence = words[row].tolist()
        end = sentence.index(END)  # every row ends, by max_length at the latest
        assert all(w not in (PAD, START, 3, END) for w in sentence[:end])
        assert all(w == PAD for w in sentence[end + 1 :]) and (log_probs[row, end + 1 :] == 0).all()
        state, previous, expected = decoder.start(features[row : row + 1]), START, []
        for t, word in enumerate(sentence[: end + 1]):
            scores, state = decoder.step(torch.tensor([previous]), state)
            scores[0, [PAD, START, 3] + ([END] if t == 0 else [])] = float("-inf")
            expected.append(scores.log_softmax(1)[0, word].item() if t < 6 else 0.0)  # the forced <end> is not learnt
            previous = word
        assert log_probs[row, : end + 1].tolist() == pytest.approx(expected, abs=1e-5)
    assert len({tuple(r) for r in words.tolist()}) > 1  # drawn, not the same sentence every time
    log_probs.sum().backward()
    assert decoder.w_image.weight.grad.abs().sum() > 0


def test_first_words_are_drawn_with_the_decoders_probabilities():
    decoder = tiny_decoder(seed=3)
    features = torch.randn(1, 6)
    with torch.no_grad():
        scores, _ = decoder.step(torch.tensor([START]), decoder.start(features))
        scores[0, [PAD, START, 3, END]] = float("-inf")
        expected = scores.softmax(1)[0]  # [9]
        torch.manual_seed(0)
        words, _ = sample(decoder, features.expand(20000, 6), greedy=False, max_length=1)
    drawn = torch.bincount(words[:, 0], minlength=9) / 20000
    assert drawn[[PAD, START, 3, END]].sum() == 0
    assert torch.allclose(drawn, expected, atol=0.015)
