"""Beam search for the int8 decoder as one OpenVINO graph: a Loop whose body is one step of
model.beam's search, so that a caption is one call instead of a Python loop of tensor operations.

A step of the Python loop runs about 25 tensor operations of a few microseconds each around its
one matmul, and the Python bookkeeping of the beams; here the same step is one pass of OpenVINO's
Loop body. The same search: the cell and log-softmax in fp32, the same int8 matmul
(model.decoder.int8_matmul), the same bans, ties and early stop. tests/test_beam_graph.py holds it
to model.beam's loop word for word; the log-probabilities may differ by about 1e-3, where
OpenVINO's sigmoid or tanh rounds otherwise than torch's and an int8 input moves a step.

The n-gram ban needs no n-gram search: each row keeps, for every earlier place p in its sentence,
how many words before p match the last words of the sentence (matched_suffix); a word at p would
repeat an n-gram exactly when n - 1 of them match. Appending a word w extends a place's count
when the word before it is w, and clears it otherwise. So block_ngram is an input, not a constant
the graph is built for.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from model.decoder import OpenVINOInt8Linear, State, compile_on_cpu, int8_matmul


class BeamGraph:
    """The loop of model.beam.beam_search, built for a frozen int8 decoder: its word table W_x E
    [V, 4H] and its stacked int8 layer (W_h and the output layer)."""

    def __init__(self, word_gates: torch.Tensor, stacked: OpenVINOInt8Linear, hidden_dim: int):
        self._request = compile_on_cpu(_search_model(word_gates, stacked, hidden_dim)).create_infer_request()
        self._request_lock = threading.Lock()
        self._check_it_runs(word_gates.size(0), hidden_dim)

    def search(self, tokens: torch.Tensor, state: State, scores: torch.Tensor, transitions: torch.Tensor,
               targets: torch.Tensor, banned_first: torch.Tensor, banned: torch.Tensor, only_end: torch.Tensor, end_id: int,
               max_length: int, block_ngram: int) -> tuple[torch.Tensor, list[list[int]]]:
        """What model.beam's loop takes and gives: tokens [B*S*K], the state (W_h h, c, W_ih v + b,
        fp32), scores [B*S, K], transitions [B, S, S, V], each image's target group [B] and the
        bans [V] -> the beams' scores [B*S, K] and their words."""
        recurrent, c, image_gates = state
        inputs = [tokens, recurrent, c, image_gates, scores, transitions, targets, banned_first, banned, only_end,
                  torch.tensor(end_id), torch.tensor(max_length), torch.tensor(block_ngram)]
        with self._request_lock:  # the outputs are the request's buffers until copied: its next call overwrites them
            outputs = self._request.infer([x.contiguous().numpy() for x in inputs], share_inputs=True, share_outputs=True)
            final_scores, words = (torch.from_numpy(outputs[i].copy()) for i in range(2))
        return final_scores, [[word for word in row if word >= 0] for row in words.tolist()]  # [B*K, steps]

    def _check_it_runs(self, vocab_size: int, hidden_dim: int) -> None:
        """OpenVINO compiles for any CPU and makes its kernels at the first call: call it once here,
        so that a CPU it cannot run on fails the int8 decoder at load, not a request."""
        V, N = vocab_size, 2 * 3
        scores = torch.full((2, 3), float("-inf"))
        scores[:, 0] = 0
        zeros = torch.zeros(V)
        self.search(torch.zeros(N, dtype=torch.long), (torch.zeros(N, 4 * hidden_dim), torch.zeros(N, hidden_dim),
                    torch.randn(N, 4 * hidden_dim, generator=torch.Generator().manual_seed(0))), scores,
                    torch.zeros(2, 1, 1, V), torch.zeros(2, dtype=torch.long), zeros, zeros, zeros, end_id=0, max_length=4,
                    block_ngram=2)


def _search_model(word_gates: torch.Tensor, stacked: OpenVINOInt8Linear, hidden_dim: int):
    import openvino
    import openvino.opset13 as ops

    V, H = word_gates.size(0), hidden_dim
    f32, i64, boolean = openvino.Type.f32, openvino.Type.i64, openvino.Type.boolean

    def const(value, dtype=np.int64):
        return ops.constant(np.array(value, dtype=dtype))

    def column(x, start, stop):  # x[:, start:stop]
        return ops.slice(x, const([start]), const([stop]), const([1]), const([1]))

    def shift_right(x, first):  # [first, x[:, 0], ..., x[:, -2]]
        return ops.pad(column(x, 0, -1), const([0, 1]), const([0, 0]), "constant", const(first))

    # One step: the Loop's body. Rows (b * S + s) * K + k as in model.beam; t is the step (the number of words so far).
    tokens = ops.parameter([-1], i64, name="tokens")  # [N]
    recurrent = ops.parameter([-1, 4 * H], f32, name="recurrent")  # [N, 4H]: W_h h
    c = ops.parameter([-1, H], f32, name="c")  # [N, H]
    scores = ops.parameter([-1, -1], f32, name="scores")  # [B*S, K]
    finished = ops.parameter([-1], boolean, name="finished")  # [N]
    words = ops.parameter([-1, -1], i64, name="words")  # [N, T]: -1 after the words so far
    matched_suffix = ops.parameter([-1, -1], i64, name="matched_suffix")  # [N, T]: see the module's docstring
    t = ops.parameter([1], i64, name="t")
    image_gates = ops.parameter([-1, 4 * H], f32, name="image_gates")  # [N, 4H]: W_ih v + b
    transitions = ops.parameter([-1, -1, -1, V], f32, name="transitions")  # [B, S, S, V]
    targets = ops.parameter([-1], i64, name="targets")  # [B]: the state with all of an image's constraints met
    banned_first, banned, only_end = (ops.parameter([V], f32, name=name) for name in ("banned_first", "banned", "only_end"))
    end_id, block_ngram = (ops.parameter([], i64, name=name) for name in ("end_id", "block_ngram"))
    body_inputs = [tokens, recurrent, c, scores, finished, words, matched_suffix, t, image_gates, transitions, targets,
                   banned_first, banned, only_end, end_id, block_ngram]

    gates = ops.add(ops.add(image_gates, ops.gather(ops.constant(word_gates.numpy()), tokens, 0)), recurrent)  # [N, 4H]
    i, f, g, o = ops.split(gates, 1, 4).outputs()
    new_c = ops.add(ops.multiply(ops.sigmoid(f), c), ops.multiply(ops.sigmoid(i), ops.tanh(g)))  # [N, H]
    h = ops.multiply(ops.sigmoid(o), ops.tanh(new_c))
    both = int8_matmul(h, stacked.weight, stacked.scale, stacked.bias)  # [N, 4H + V]
    next_recurrent = column(both, 0, 4 * H)  # [N, 4H]: W_h h
    log_probs = ops.log_softmax(column(both, 4 * H, 4 * H + V), 1)  # [N, V]
    log_probs = ops.add(log_probs, ops.select(ops.equal(t, const([0])), banned_first, banned))

    # n-gram ban: the word at place p (< t) is banned where the block_ngram - 1 words before p match the sentence's last ones
    places = ops.range(const(0), ops.gather(ops.shape_of(words), const(1), 0), const(1), i64)  # [T]
    repeats = ops.logical_and(ops.less(places, t), ops.greater_equal(matched_suffix, ops.subtract(block_ngram, const(1))))
    repeats = ops.logical_and(repeats, ops.greater(block_ngram, const(0)))  # [N, T]
    ban = ops.select(repeats, const(-np.inf, np.float32), const(np.inf, np.float32))  # [N, T]: the min with each place's word
    log_probs = ops.scatter_elements_update(log_probs, ops.maximum(words, const(0)), ban, 1, "min")
    log_probs = ops.select(ops.unsqueeze(finished, const([1])), only_end, log_probs)  # a finished beam may only add <end>, at no cost

    # Each group's candidates: every group's words that lead to its state (model.beam); S = 1: its own beams'
    K = ops.gather(ops.shape_of(scores), const(1), 0)
    B, S = (ops.gather(ops.shape_of(transitions), const(axis), 0) for axis in (0, 2))
    total = ops.reshape(ops.add(ops.reshape(scores, const([-1, 1]), False), log_probs),
                        ops.concat([ops.unsqueeze(B, const([0])), const([1]), ops.unsqueeze(S, const([0])),
                                    ops.unsqueeze(K, const([0])), const([V])], 0), False)  # [B, 1, S, K, V]
    candidates = ops.add(total, ops.unsqueeze(transitions, const([3])))  # [B, S, S, K, V]
    candidates = ops.reshape(candidates, ops.concat([const([-1]), ops.unsqueeze(ops.multiply(ops.multiply(S, K), const(V)),
                                                                                  const([0]))], 0), False)  # [B*S, S*K*V]
    top = ops.topk(candidates, K, 1, "max", "value", i64)
    new_scores, picks = top.output(0), top.output(1)  # [B*S, K]
    groups = ops.range(const(0), ops.gather(ops.shape_of(picks), const(0), 0), const(1), i64)  # [B*S]
    first_rows = ops.multiply(ops.divide(groups, S), ops.multiply(S, K))  # each group's image's first row
    rows = ops.reshape(ops.add(ops.divide(picks, const(V)), ops.unsqueeze(first_rows, const([1]))), const([-1]), False)  # [N]
    new_tokens = ops.reshape(ops.floor_mod(picks, const(V)), const([-1]), False)  # [N]
    new_words = ops.gather(words, rows, 0)  # reordering stays inside each image
    extended = ops.equal(shift_right(new_words, -1), ops.unsqueeze(new_tokens, const([1])))
    new_matched_suffix = ops.select(extended, ops.add(shift_right(ops.gather(matched_suffix, rows, 0), 0), const(1)), const(0))
    new_words = ops.scatter_update(new_words, t, ops.unsqueeze(new_tokens, const([1])), const(1))
    new_finished = ops.logical_or(ops.gather(finished, rows, 0), ops.equal(new_tokens, end_id))
    # Over for an image once its target group holds K finished sentences that every unfinished one scores below (model.beam)
    by_image = ops.concat([const([-1]), ops.unsqueeze(S, const([0])), ops.unsqueeze(K, const([0]))], 0)
    image_scores, image_finished = ops.reshape(new_scores, by_image, False), ops.reshape(new_finished, by_image, False)  # [B, S, K]
    minus_inf = const(-np.inf, np.float32)
    live = ops.logical_and(ops.logical_not(image_finished), ops.greater(image_scores, minus_inf))
    unfinished = ops.reduce_max(ops.select(live, image_scores, minus_inf), const([1, 2]), False)  # [B]
    target = ops.gather(image_scores, targets, 1, 1)  # [B, K]
    full = ops.reduce_logical_and(ops.logical_and(ops.gather(image_finished, targets, 1, 1), ops.greater(target, minus_inf)),
                                  const([1]), False)
    over = ops.logical_or(ops.equal(unfinished, minus_inf),
                          ops.logical_and(full, ops.greater_equal(ops.reduce_min(target, const([1]), False), unfinished)))
    go_on = ops.logical_not(ops.reduce_logical_and(over, const([0]), False))
    body_outputs = [new_tokens, ops.gather(next_recurrent, rows, 0), ops.gather(new_c, rows, 0), new_scores, new_finished,
                    new_words, new_matched_suffix, go_on]
    body_outputs = [output if isinstance(output, openvino.Output) else output.output(0) for output in body_outputs]

    # The loop: at most max_length steps, and none once every beam has ended
    outer = {name: ops.parameter(shape, dtype, name=name) for name, shape, dtype in (
        ("tokens", [-1], i64), ("recurrent", [-1, 4 * H], f32), ("c", [-1, H], f32), ("image_gates", [-1, 4 * H], f32),
        ("scores", [-1, -1], f32), ("transitions", [-1, -1, -1, V], f32), ("targets", [-1], i64), ("banned_first", [V], f32),
        ("banned", [V], f32), ("only_end", [V], f32),
        ("end_id", [], i64), ("max_length", [], i64), ("block_ngram", [], i64))}
    table_shape = ops.concat([ops.shape_of(outer["tokens"]), ops.unsqueeze(outer["max_length"], const([0]))], 0)  # [N, T]
    starts = {**outer, "finished": ops.broadcast(const(False, bool), ops.shape_of(outer["tokens"])),
              "words": ops.broadcast(const(-1), table_shape), "matched_suffix": ops.broadcast(const(0), table_shape)}
    loop = ops.loop(outer["max_length"], const(True, bool))
    loop.set_function(openvino.Model(body_outputs, body_inputs))
    loop.set_special_body_ports([body_inputs.index(t), len(body_outputs) - 1])
    for parameter, output in zip(body_inputs[:7], body_outputs):
        loop.set_merged_input(parameter, starts[parameter.get_friendly_name()].output(0), output)
    for parameter in body_inputs[8:]:
        loop.set_invariant_input(parameter, outer[parameter.get_friendly_name()].output(0))
    results = [loop.get_iter_value(body_outputs[3], -1), loop.get_iter_value(body_outputs[5], -1)]  # scores [B*S, K], words [N, T]
    return openvino.Model(results, list(outer.values()))
