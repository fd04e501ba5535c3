"""Beam search as one OpenVINO graph, the CPU's: a Loop whose body is one step of runtime.beam's
search, so that a caption is one call instead of a Python loop of array operations.

A step of the Python loop runs about 25 array operations of a few microseconds each around its
one matmul, and the Python bookkeeping of the beams; here the same step is one pass of OpenVINO's
Loop body, built from the decoder's tensors (runtime.decoder.FrozenDecoder). The same search: the
cell and log-softmax in fp32, the same bans, ties and early stop. Its matmuls run in int8 (the
default) or fp32 (_matmul). tests/test_beam_graph.py holds the fp32 graph to runtime.beam's numpy
loop word for word, and the int8 graph to the same best captions on the shipped weights.

The n-gram ban needs no n-gram search: each row keeps, for every earlier place p in its sentence,
how many words before p match the last words of the sentence (matched_suffix); a word at p would
repeat an n-gram exactly when n - 1 of them match. Appending a word w extends a place's count
when the word before it is w, and clears it otherwise. So block_ngram is an input, not a constant
the graph is built for.
"""
from __future__ import annotations

import threading

import numpy as np

from runtime.cnn import cpu_threads, drift, openvino_core
from runtime.decoder import ArrayStep, FrozenDecoder, quantize, zero_state

PRECISIONS = ("int8", "fp32")  # the graph's matmuls; int8 first: it reads a quarter of fp32's bytes a step
# ||y - y_fp32|| / ||y_fp32|| allowed per row when a layer is checked at load: int8 is at about 0.01 here,
# fp32 at 1e-6; a kernel that cannot run on this CPU raises, and a wrong graph is at 1 or more.
MAX_DRIFT = {"int8": 0.05, "fp32": 1e-4}
MAX_STEP_DRIFT = {"int8": 0.1, "fp32": 1e-3}  # nats: the best first word's log-probability
PROBE_ROWS = (1, 160)  # OpenVINO picks its kernel by the rows: one, and 16 images at beam 10


class BeamGraph:
    """The loop of runtime.beam.beam_search for a frozen decoder, its matmuls in `precision` (int8:
    weights in int8, one scale per output, each input row quantized per group of 32 on the fly, as
    OpenVINO runs LLM decoders; fp32). Raises, before it is used, where OpenVINO cannot build or
    run it here, or where its layers drift from the decoder's fp32 numbers beyond MAX_DRIFT."""

    def __init__(self, decoder: FrozenDecoder, precision: str = "int8"):
        if precision not in PRECISIONS:
            raise ValueError(f"the decoder graph runs in {' or '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.vocab_size = decoder.vocab_size
        self._image_request = layer_request(decoder.image_weight, decoder.image_bias, precision)
        self._request = compile_on_cpu(_search_model(decoder, precision)).create_infer_request()
        self._request_lock = threading.Lock()
        self._check(decoder)

    def image_gates(self, features: np.ndarray) -> np.ndarray:
        """features [B, D] -> W_ih v + b [B, 4H], fp32."""
        with self._request_lock:  # the output is the request's buffer until copied: its next call overwrites it
            return self._image_request.infer([np.ascontiguousarray(features, np.float32)])[0].copy()

    def start(self, image_gates: np.ndarray, rows_per_image: int):
        return zero_state(image_gates, rows_per_image)

    def search(self, tokens: np.ndarray, state, scores: np.ndarray, transitions: np.ndarray, targets: np.ndarray,
               banned_first: np.ndarray, banned: np.ndarray, only_end: np.ndarray, end_id: int, max_length: int,
               block_ngram: int) -> tuple[np.ndarray, list[list[int]]]:
        """What runtime.beam's loop takes and gives: tokens [B*S*K], the state (W_h h, c, W_ih v + b,
        fp32), scores [B*S, K], transitions [B, S, S, V], each image's target group [B] and the
        bans [V] -> the beams' scores [B*S, K] and their words."""
        recurrent, c, image_gates = state
        inputs = [tokens, recurrent, c, image_gates, scores, transitions, targets, banned_first, banned, only_end,
                  np.array(end_id), np.array(max_length), np.array(block_ngram)]
        inputs = [np.require(x, np.int64 if x.dtype.kind in "iu" else np.float32, "C") for x in inputs]  # 0-d stays 0-d
        with self._request_lock:
            outputs = self._request.infer(inputs, share_inputs=True, share_outputs=True)
            final_scores, words = outputs[0].copy(), outputs[1].copy()
        return final_scores, [[word for word in row if word >= 0] for row in words.tolist()]  # [B*K, steps]

    def one_step(self, tokens: np.ndarray, state, images: int) -> np.ndarray:
        """A search of one step from `state` for `images` images of len(tokens) // images beams each,
        every beam live and nothing banned: the beams' scores after it [images, K]."""
        V = self.vocab_size
        nothing = np.zeros(V, np.float32)
        scores, _ = self.search(tokens, state, np.zeros((images, len(tokens) // images), np.float32),
                                np.zeros((images, 1, 1, V), np.float32), np.zeros(images, np.int64), nothing, nothing,
                                nothing, end_id=0, max_length=1, block_ngram=0)
        return scores

    def _check(self, decoder: FrozenDecoder) -> None:
        """OpenVINO compiles for any CPU and makes its kernels at the first call: call both graphs
        here, so that a CPU they cannot run on fails them at load, not a request. Against numpy's
        fp32 step (the reference): the image layer, on a few rows and on many, within MAX_DRIFT."""
        reference = ArrayStep(decoder)
        generator = np.random.default_rng(0)
        H, V = decoder.hidden_dim, decoder.vocab_size
        for rows in PROBE_ROWS:
            features = generator.standard_normal((rows, decoder.image_weight.shape[1]), np.float32)
            moved = drift(self.image_gates(features), reference.image_gates(features))
            if not moved <= MAX_DRIFT[self.precision]:
                raise RuntimeError(f"the {self.precision} decoder graph's image layer is {moved:.1e} from fp32 on {rows} "
                                   f"probe rows (allowed {MAX_DRIFT[self.precision]})")
        # One step of one beam from the zero state: its score is the step's best log-probability
        state = zero_state(generator.standard_normal((2, 4 * H), np.float32), 1)
        got = self.one_step(np.zeros(2, np.int64), state, images=2)
        log_probs, _ = reference.step(np.zeros(2, np.int64), state)
        moved = float(np.abs(got[:, 0] - log_probs.max(1)).max())
        if not moved <= MAX_STEP_DRIFT[self.precision]:
            raise RuntimeError(f"the {self.precision} decoder graph's first step scores {moved:.1e} away from the fp32 "
                               f"decoder's on the probe (allowed {MAX_STEP_DRIFT[self.precision]})")


def layer_request(weight: np.ndarray, bias: np.ndarray, precision: str):
    """One layer alone, as the graph runs it (_matmul), compiled: an infer request for x [any, K] fp32
    -> x weight^T + bias, weight [N, K]."""
    import openvino
    import openvino.opset13 as ops

    x = ops.parameter([-1, weight.shape[1]], openvino.Type.f32)
    return compile_on_cpu(openvino.Model([_matmul(x, weight, bias, precision)], [x])).create_infer_request()


def _matmul(x, weight: np.ndarray, bias: np.ndarray, precision: str):
    """The OpenVINO node for x [any, K] fp32 -> x weight^T + bias, weight [N, K]. In int8, the
    weight int8 with one scale per output, widened inside the graph: a pattern that OpenVINO's CPU
    plugin runs as one matmul on the compressed weights, x quantized per group of 32
    (compile_on_cpu). The output is 1.0% from fp32's. Built op by op: tracing the same in torch
    took 1.8 s at start."""
    import openvino
    import openvino.opset13 as ops

    if precision == "int8":
        quantized, scale = quantize(weight)
        weight_node = ops.multiply(ops.convert(ops.constant(quantized), openvino.Type.f32), ops.constant(scale))
    else:
        weight_node = ops.constant(np.ascontiguousarray(weight, np.float32))
    return ops.add(ops.matmul(x, weight_node, transpose_a=False, transpose_b=True), ops.constant(np.asarray(bias, np.float32)))


def compile_on_cpu(model):
    """A decoder graph compiled for the CPU: in fp32, but for the int8 matmuls' inputs, quantized
    per group of 32 (OpenVINO's default, pinned here so that the numbers do not move with OpenVINO's
    defaults), on all the cores this process may use. There, one image at a time, beam 3, the
    whole search as one graph took 5.7-6.0 ms a caption on two threads, 7.2 on one (docs/performance.md)."""
    return openvino_core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": cpu_threads(),
    })


def _search_model(decoder: FrozenDecoder, precision: str):
    import openvino
    import openvino.opset13 as ops

    V, H = decoder.vocab_size, decoder.hidden_dim
    f32, i64, boolean = openvino.Type.f32, openvino.Type.i64, openvino.Type.boolean

    def const(value, dtype=np.int64):
        return ops.constant(np.array(value, dtype=dtype))

    def column(x, start, stop):  # x[:, start:stop]
        return ops.slice(x, const([start]), const([stop]), const([1]), const([1]))

    def shift_right(x, first):  # [first, x[:, 0], ..., x[:, -2]]
        return ops.pad(column(x, 0, -1), const([0, 1]), const([0, 0]), "constant", const(first))

    # One step: the Loop's body. Rows (b * S + s) * K + k as in runtime.beam; t is the step (the number of words so far).
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

    gates = ops.add(ops.add(image_gates, ops.gather(ops.constant(decoder.word_gates), tokens, 0)), recurrent)  # [N, 4H]
    i, f, g, o = ops.split(gates, 1, 4).outputs()
    new_c = ops.add(ops.multiply(ops.sigmoid(f), c), ops.multiply(ops.sigmoid(i), ops.tanh(g)))  # [N, H]
    h = ops.multiply(ops.sigmoid(o), ops.tanh(new_c))
    both = _matmul(h, decoder.stacked, decoder.stacked_bias, precision)  # [N, 4H + V]
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

    # Each group's candidates: every group's words that lead to its state (runtime.beam); S = 1: its own beams'
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
    # Over for an image once its target group holds K finished sentences that every unfinished one scores below (runtime.beam)
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
