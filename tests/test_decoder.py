import copy

import pytest

import torch

import torch.nn.functional as F

from model.decoder import Decoder, DecoderConfig, OpenVINOInt8Linear, PackedLinear

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


def test_for_inference_folds_w_x_into_the_word_table_and_stacks_w_h_on_the_output_layer_without_changing_the_model():
    decoder = tiny_decoder()
    features, tokens = torch.randn(2, 6), torch.tensor([[START, 4, 5, END], [START, 6, 7, 8]])
    expected, _ = stepwise_log_probs(decoder, features, tokens)
    folded = copy.deepcopy(decoder).for_inference(torch.float32)
    assert isinstance(folded.w_word, torch.nn.Identity) and folded.embed.weight.shape == (9, 4 * 5)
    assert folded.w_hidden_and_out.weight.shape == (4 * 5 + 9, 5) and not hasattr(folded, "out")
    assert not any(p.requires_grad for p in folded.parameters())
    assert torch.allclose(stepwise_log_probs(folded, features, tokens)[0], expected, atol=1e-6)


def test_bf16_inference_keeps_the_cell_and_the_log_probs_in_fp32():
    decoder = tiny_decoder()
    features, tokens = torch.randn(2, 6), torch.tensor([[START, 4, 5, END], [START, 6, 7, 8]])
    expected, _ = stepwise_log_probs(decoder, features, tokens)
    bf16 = copy.deepcopy(decoder).for_inference(torch.bfloat16)
    assert bf16.w_hidden_and_out.weight.dtype == torch.bfloat16
    log_probs, (recurrent, c, _) = stepwise_log_probs(bf16, features, tokens)
    assert log_probs.dtype == c.dtype == torch.float32 and recurrent.dtype == torch.bfloat16  # W_h h, as the matmul gave it
    assert torch.allclose(log_probs, expected, atol=0.05)
    assert not torch.allclose(log_probs, expected, atol=1e-6)  # it did run in bf16


def test_int8_inference_quantizes_the_matmuls_and_keeps_the_rest_in_fp32():
    decoder = tiny_decoder()
    features, tokens = torch.randn(2, 6), torch.tensor([[START, 4, 5, END], [START, 6, 7, 8]])
    expected, _ = stepwise_log_probs(decoder, features, tokens)
    int8 = copy.deepcopy(decoder).for_inference(torch.int8)
    assert int8.precision == "int8" and decoder.precision == "fp32"
    assert all(isinstance(layer, OpenVINOInt8Linear) for layer in (int8.w_hidden_and_out, int8.w_image))
    assert int8.embed.weight.dtype == torch.float32  # a row lookup: nothing to gain from int8
    log_probs, (recurrent, c, _) = stepwise_log_probs(int8, features, tokens)
    assert log_probs.dtype == recurrent.dtype == c.dtype == torch.float32
    assert torch.allclose(log_probs, expected, atol=0.05)
    assert not torch.allclose(log_probs, expected, atol=1e-6)  # it did run in int8


def test_int8_linear_is_close_to_fp32_and_a_row_never_depends_on_the_rows_beside_it():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    int8 = OpenVINOInt8Linear(linear)
    assert int8.weight.dtype == torch.int8 and int8.weight.shape == linear.weight.shape
    rows = torch.randn(7, 64) * torch.logspace(-2, 1, 7)[:, None]  # rows of very different sizes
    with torch.no_grad():
        expected = linear(rows)
    batched = int8(rows)
    assert ((batched - expected).norm(dim=1) / expected.norm(dim=1)).max() < 0.02
    assert not torch.allclose(batched, expected, atol=1e-6)  # the weights were rounded to int8
    # The kernel OpenVINO picks depends on the number of rows; a row's numbers must not.
    assert all(torch.equal(int8(rows[i:i + 1])[0], batched[i]) for i in range(len(rows)))
    first = batched.clone()
    int8(torch.randn(3, 64))
    assert torch.equal(batched, first)  # the output is the caller's, not the request's buffer


@pytest.mark.parametrize("fault", ["openvino missing", "wrong numbers", "fails at its first call", "no beam graph"])
def test_int8_that_openvino_cannot_build_or_run_right_raises_before_changing_the_decoder(monkeypatch, fault):
    import model.beam_graph
    import model.decoder
    import model.encoder

    build = model.decoder._int8_matmul_request
    build_graph = model.beam_graph._search_model

    def not_installed():
        raise ModuleNotFoundError("No module named 'openvino'")

    def faulty(weight, scale, bias):  # a real OpenVINO request, with the fault in its graph
        if fault == "wrong numbers":
            return build(weight, scale * 2, bias)
        return build(torch.cat([weight, weight[:, :1]], 1), scale, bias)  # compiles; a call with the layer's width raises

    def graph_of_another_width(word_gates, stacked, hidden_dim):  # the real builder, given a word table one column too wide
        return build_graph(torch.cat([word_gates, word_gates[:, :1]], 1), stacked, hidden_dim)

    if fault == "openvino missing":
        monkeypatch.setattr(model.encoder, "openvino_core", not_installed)
    elif fault == "no beam graph":
        monkeypatch.setattr(model.beam_graph, "_search_model", graph_of_another_width)
    else:
        monkeypatch.setattr(model.decoder, "_int8_matmul_request", faulty)
    decoder = tiny_decoder()
    with pytest.raises(ModuleNotFoundError if fault == "openvino missing" else RuntimeError) as raised:
        decoder.for_inference(torch.int8)
    if fault == "wrong numbers":
        assert "from fp32 on 1 probe rows" in str(raised.value)
    assert decoder.precision == "fp32" and decoder.w_hidden_and_out is None and decoder.beam_graph is None
    assert isinstance(decoder.w_word, torch.nn.Linear)
    assert decoder.for_inference(torch.float32).precision == "fp32"  # and it can still be frozen


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_bf16_inference_on_the_cpu_packs_the_matmuls_for_onednn():
    bf16 = tiny_decoder().for_inference(torch.bfloat16)
    assert all(isinstance(layer, PackedLinear) for layer in (bf16.w_hidden_and_out, bf16.w_image))
    assert bf16.precision == "bf16"


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_packed_linear_gives_f_linears_bf16_numbers_and_a_row_never_depends_on_the_rows_beside_it():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96).to(torch.bfloat16)
    packed = PackedLinear(linear)
    rows = (torch.randn(7, 64) * torch.logspace(-2, 1, 7)[:, None]).to(torch.bfloat16)
    with torch.no_grad():
        expected = linear(rows)
    batched = packed(rows)
    assert batched.dtype == torch.bfloat16 and torch.equal(batched, expected)
    assert all(torch.equal(packed(rows[i:i + 1])[0], batched[i]) for i in range(len(rows)))


def test_int8_is_the_default_on_a_cpu_and_refused_on_a_gpu():
    from model.captioner import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == torch.int8
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="CPU only"):
        resolve_precision("int8", torch.device("cuda"))


def sample(decoder, features, greedy, max_length=6):
    return decoder.sample(features, start_id=START, end_id=END, banned_ids=[PAD, START, 3], max_length=max_length,
                          greedy=greedy)


def test_greedy_sample_is_beam_search_of_width_one():
    from model.beam import beam_search

    decoder = tiny_decoder(seed=1)
    features = torch.randn(6, 6)
    with torch.no_grad():
        words, _ = sample(decoder, features, greedy=True)
    beams = beam_search(decoder, features, start_id=START, end_id=END, banned_ids=(PAD, START, 3), beam_size=1, max_length=6)
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
