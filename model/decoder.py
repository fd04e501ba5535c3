"""The LSTM caption decoder, conditioned on the image vector v at every step.

With x_t the embedding of word t and v the encoder's pooled image feature, the gates are

    i, f, g, o = split(W_x x_t + W_h h_{t-1} + W_ih v + b)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)
    p(w_{t+1} | w_<=t, v) = softmax(W_out dropout(h_t) + b_out)

the LSTM form of the seed's h_t = tanh(W_hh h_{t-1} + W_xh x_t + W_ih v). W_ih v + b is the same at
every step of a sentence, so it is computed once per sentence, and W_x x_t once for all steps in
one matmul; only W_h h_{t-1} stays inside the recurrence. A fused LSTM (nn.LSTM / cuDNN) would
recompute W_ih v at every step from the input [x_t ; v]: measured on 2 CPU cores, this loop is
1.9x faster per training step. Padding needs no packing: it comes after <end>, the recurrence
is causal, and the loss skips it.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # W_h h [N, 4H], c [N, H], W_ih v + b [N, 4H]
MATMUL_DTYPES = {"int8": torch.int8, "bf16": torch.bfloat16, "fp32": torch.float32}  # what for_inference takes, by name
PRECISION_NAMES = {dtype: name for name, dtype in MATMUL_DTYPES.items()}
# ||y - y_fp32|| / ||y_fp32|| allowed per row when an int8 layer is checked at load: about 0.01 here;
# a kernel that cannot run on this CPU raises, and a wrong graph is at 1 or more.
MAX_INT8_DRIFT = 0.05
INT8_PROBE_ROWS = (1, 160)  # OpenVINO picks its kernel by the rows: one, and 16 images at beam 10


@dataclass
class DecoderConfig:
    vocab_size: int
    feature_dim: int  # the encoder's: 1408 for the default efficientnet-lite0
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.3
    pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        E, D, H, V = config.embed_dim, config.feature_dim, config.hidden_dim, config.vocab_size
        self.embed = nn.Embedding(V, E, padding_idx=config.pad_id)
        self.w_word = nn.Linear(E, 4 * H, bias=False)  # W_x
        self.w_hidden = nn.Linear(H, 4 * H, bias=False)  # W_h
        self.w_image = nn.Linear(D, 4 * H)  # W_ih and b
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(H, V)
        self.w_hidden_and_out: nn.Module | None = None  # for_inference: W_h and the output layer as one layer
        self.beam_graph = None  # for_inference in int8: model.beam_graph.BeamGraph, the beam search's loop in OpenVINO
        with torch.no_grad():  # forget-gate bias 1: remember by default early in training
            self.w_image.bias[H : 2 * H].fill_(1.0)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, label_smoothing: float = 0.0,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: features [B, D], tokens [B, T] (<start> w1 .. <end> <pad>..) -> the mean
        cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1] over the real (non-pad) targets;
        with weights [B], each caption's words count that much in the mean.

        The output layer runs on the real targets only: with a vocabulary of thousands it is the
        costliest matmul of a step, and a batch padded to its longest caption is partly padding
        (about 30% for captions of 8 to 20 words, as in bench/train.py)."""
        targets = tokens[:, 1:]  # [B, T-1]
        real = targets != self.config.pad_id  # [B, T-1]
        hidden = self.hidden_states(features, tokens)[real]  # [N, H]: N real targets
        logits = self.out(self.dropout(hidden))  # [N, V]
        if weights is None:
            return F.cross_entropy(logits, targets[real], label_smoothing=label_smoothing)
        word_weights = weights[:, None].expand_as(targets)[real]  # [N]
        losses = F.cross_entropy(logits, targets[real], label_smoothing=label_smoothing, reduction="none")  # [N]
        return (losses * word_weights).sum() / word_weights.sum().clamp_min(1e-12)  # a batch of weight 0 learns nothing

    def hidden_states(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """features [B, D], tokens [B, T] -> h_1 .. h_{T-1} [B, T-1, H], the states that predict tokens[:, 1:]."""
        word_gates = self.w_word(self.dropout(self.embed(tokens[:, :-1])))  # [B, T-1, 4H]
        recurrent, c, image_gates = self.start(self.dropout(features))
        hidden = []
        for t in range(word_gates.size(1)):
            h, c = self._cell(word_gates[:, t] + recurrent + image_gates, c)
            hidden.append(h)
            recurrent = self.w_hidden(h)
        return torch.stack(hidden, dim=1)

    def start(self, features: torch.Tensor) -> State:
        """features [N, D] -> the zero state (W_h h_0 = 0 and c_0 = 0) and the per-image gate term W_ih v + b [N, 4H].

        The state carries W_h h rather than h: beam search reorders the rows between steps, and the
        matmul of a row does not depend on its place, so W_h h can be computed before the reordering,
        in one matmul with the output layer (_recurrent_and_logits)."""
        N, H = features.size(0), self.config.hidden_dim
        return features.new_zeros(N, 4 * H), features.new_zeros(N, H), self.w_image(features.to(self.matmul_dtype))

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One word for each of N sentences: tokens [N] -> next-word log-probabilities [N, V], new state.
        The matmuls run in the weights' dtype; the cell and the log-probabilities in fp32.
        In training mode the dropout falls where teacher forcing has it (self-critical training)."""
        recurrent, c, image_gates = state
        gates = image_gates.float() + self.w_word(self.dropout(self.embed(tokens))) + recurrent  # [N, 4H]
        h, c = self._cell(gates, c)
        recurrent, logits = self._recurrent_and_logits(h)
        return F.log_softmax(logits.float(), dim=-1), (recurrent, c, image_gates)

    def _recurrent_and_logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [N, H] -> W_h h [N, 4H] for the next step, and the output layer's logits [N, V].

        Frozen for inference, both are one matmul over the two weights stacked: a step of beam search
        costs what reading them costs, and read in one pass instead of two a bf16 step took about a
        fifth less on one Xeon core (bench/beam.py). In training the output layer sees h through
        dropout, W_h does not."""
        h = h.to(self.matmul_dtype)
        if self.w_hidden_and_out is None:
            return self.w_hidden(h), self.out(self.dropout(h))
        both = self.w_hidden_and_out(h)  # [N, 4H + V]
        return both[:, : 4 * self.config.hidden_dim], both[:, 4 * self.config.hidden_dim :]

    def sample(
        self, features: torch.Tensor, start_id: int, end_id: int, banned_ids: list[int], max_length: int, greedy: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one sentence per row of features [N, D]: greedy takes the likeliest word at each step,
        otherwise each word is drawn from the decoder's distribution (self-critical training).

        Returns words [N, T] and their log-probabilities [N, T], T <= max_length + 1 (the words then
        <end>); after a row's <end> its words are pad_id and its log-probabilities 0. The
        log-probabilities carry gradients when autograd is on; in training mode, with dropout."""
        N = features.size(0)
        tokens = torch.full((N,), start_id, dtype=torch.long, device=features.device)
        state = self.start(self.dropout(features))
        done = torch.zeros(N, dtype=torch.bool, device=features.device)
        words, log_probs = [], []
        for t in range(max_length + 1):
            scores, state = self.step(tokens, state)  # [N, V]
            banned = [*banned_ids, end_id] if t == 0 else banned_ids  # at least one word
            scores = scores.index_fill(1, torch.tensor(banned, device=scores.device), float("-inf"))
            if t == max_length:  # the longest sentence ends here
                tokens = torch.full_like(tokens, end_id)
            elif greedy:
                tokens = scores.argmax(1)
            else:  # inverse CDF: one random number a row; torch.multinomial drew one per word (25 ms a step here)
                cdf = scores.detach().exp().cumsum(1)  # [N, V], flat over banned words
                tokens = torch.searchsorted(cdf, torch.rand(N, 1, device=cdf.device) * cdf[:, -1:], right=True).squeeze(1)
            chosen = scores.log_softmax(1).gather(1, tokens[:, None]).squeeze(1)  # [N], renormalised after the bans
            words.append(tokens.masked_fill(done, self.config.pad_id))
            log_probs.append(chosen.masked_fill(done, 0.0) if t < max_length else torch.zeros_like(chosen))  # forced: not learnt
            done = done | (tokens == end_id)
            if done.all():
                break
        return torch.stack(words, 1), torch.stack(log_probs, 1)

    @property
    def precision(self) -> str:
        """What the matmuls run in: a name of MATMUL_DTYPES."""
        return PRECISION_NAMES[self.w_image.weight.dtype]

    @property
    def matmul_dtype(self) -> torch.dtype:
        """What the matmuls take their inputs in: the weights' dtype, and fp32 for int8 weights
        (OpenVINOInt8Linear takes fp32 rows and quantizes them itself), like the word table beside them."""
        return self.embed.weight.dtype

    @torch.no_grad()
    def for_inference(self, dtype: torch.dtype = torch.float32) -> Decoder:
        """Frozen for decoding only, in place: W_x folded into the word table, so each step looks up
        a row of W_x E [V, 4H] instead of running a matmul; W_h stacked on the output layer
        (w_hidden_and_out), so each step runs one matmul; and the weights cast to `dtype`.
        torch.int8 makes W_ih and the stacked layer OpenVINOInt8Linear layers, the rest fp32, and
        builds the beam search's loop for them (beam_graph); bf16 on a CPU makes them PackedLinear
        layers. If those cannot be built (OpenVINO missing or failing), the error is raised before
        anything changes.

        A step of beam search multiplies a few rows by the weights, so its cost is reading them
        (bench/beam.py times the step in each precision)."""
        stacked = nn.Linear(self.config.hidden_dim, self.w_hidden.out_features + self.out.out_features,
                            device=self.out.weight.device)
        stacked.weight.copy_(torch.cat([self.w_hidden.weight, self.out.weight]))  # [4H + V, H]
        stacked.bias.copy_(torch.cat([self.w_hidden.weight.new_zeros(self.w_hidden.out_features), self.out.bias]))
        on_onednn = stacked.weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
        layer = OpenVINOInt8Linear if dtype == torch.int8 else PackedLinear if dtype == torch.bfloat16 and on_onednn else None
        replaced = {name: layer(module) for name, module in (("w_hidden_and_out", stacked), ("w_image", self.w_image))} if layer else {}
        word_gates = self.w_word(self.embed.weight)  # [V, 4H]
        if dtype == torch.int8:
            from model.beam_graph import BeamGraph

            self.beam_graph = BeamGraph(word_gates, replaced["w_hidden_and_out"], self.config.hidden_dim)
        self.embed = nn.Embedding.from_pretrained(word_gates)
        self.w_word = nn.Identity()
        del self.w_hidden, self.out
        self.w_hidden_and_out = stacked
        self.to(torch.float32 if dtype == torch.int8 else dtype).eval().requires_grad_(False)
        for name, module in replaced.items():
            setattr(self, name, module)
        return self

    @staticmethod
    def _cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = gates.chunk(4, dim=1)  # [N, 4H] -> 4 x [N, H]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class OpenVINOInt8Linear(nn.Module):
    """A frozen nn.Linear with int8 weights, one scale per output, run by OpenVINO's CPU plugin as it
    runs LLM decoders: one matmul on the compressed weights, with each input row quantized to int8
    on the fly, one scale per 32 of its values (dynamic quantization). A step of beam search
    multiplies a few rows by the weights, so it costs what reading them costs, and int8 reads a
    quarter of fp32's bytes and half of bf16's. On the Xeon with AMX the matmul ran 1.4x faster than
    torch's bf16 one; on a Zen 4 EPYC (no AMX) 2.5x slower, yet int8 is the faster decoder there
    too, since its whole search is one graph (model.beam_graph; docs/performance.md, "The beam search").

    Each row is quantized on its own, so its output never depends on the other rows
    (tests/test_decoder.py). The output is 1.0% from fp32's (0.84% with the inputs left in fp32, at
    twice the time a step). Before, int8 meant torch's int8 x int8 matmul with one scale per row:
    slower at a few rows and further from fp32 (dev CIDEr 0.5506 against this one's 0.5526, bench
    README)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()  # [N, K]
        scale = weight.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127  # [N, 1]
        self.register_buffer("weight", (weight / scale).round().to(torch.int8))  # [N, K]
        self.register_buffer("scale", scale)
        self.register_buffer("bias", linear.bias.detach().float() if linear.bias is not None else torch.zeros(len(scale)))
        self._request = _int8_matmul_request(self.weight, self.scale, self.bias)
        self._request_lock = threading.Lock()  # one request: calls from two threads take turns
        self._check_against(linear)

    def _check_against(self, linear: nn.Linear) -> None:
        """Raise unless this layer runs here and gives linear's numbers within MAX_INT8_DRIFT, on a few
        rows and on many. OpenVINO compiles the graph for any CPU but makes its kernel at the first
        call: where it has none for this CPU (seen with oneDNN held to AVX2 on this Xeon), that call
        raises, and a check at load turns it into the native precision instead of failed requests."""
        generator = torch.Generator().manual_seed(0)
        for rows in INT8_PROBE_ROWS:
            probe = torch.randn(rows, linear.in_features, generator=generator)
            with torch.no_grad():
                expected = F.linear(probe, linear.weight.float(), None if linear.bias is None else linear.bias.float())
            drift = ((self(probe) - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-12)).max().item()
            if not drift <= MAX_INT8_DRIFT:
                raise RuntimeError(f"OpenVINO's int8 matmul is {drift:.1e} from fp32 on {rows} probe rows (allowed {MAX_INT8_DRIFT})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, K] fp32 -> [M, N] fp32
        import openvino

        with self._request_lock:  # the request's output buffer is overwritten by its next call: hence the copy
            self._request.set_input_tensor(0, openvino.Tensor(x.float().contiguous().numpy(), shared_memory=True))
            self._request.infer()
            return torch.from_numpy(self._request.get_output_tensor(0).data).clone()


def _int8_matmul_request(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    import openvino
    import openvino.opset13 as ops

    x = ops.parameter([-1, weight.size(1)], openvino.Type.f32)
    return compile_on_cpu(openvino.Model([int8_matmul(x, weight, scale, bias)], [x])).create_infer_request()


def int8_matmul(x, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """The OpenVINO node for x [any, K] fp32 -> x (weight * scale)^T + bias, weight int8 [N, K] and
    scale [N, 1] widened inside the graph: a pattern that OpenVINO's CPU plugin runs as
    one matmul on the compressed weights, x quantized per group of 32 (compile_on_cpu). Built op by
    op: tracing the same in torch took 1.8 s at start."""
    import openvino
    import openvino.opset13 as ops

    widened = ops.multiply(ops.convert(ops.constant(weight.numpy()), openvino.Type.f32), ops.constant(scale.numpy()))
    return ops.add(ops.matmul(x, widened, transpose_a=False, transpose_b=True), ops.constant(bias.numpy()))


def compile_on_cpu(model):
    """An OpenVINO model of the decoder's compiled for the CPU: in fp32, but for the int8 matmuls'
    inputs, quantized per group of 32 (OpenVINO's default, pinned here so that the numbers do not
    move with OpenVINO's defaults).

    It runs on as many threads as torch has now: all cores in the service, which builds the
    decoder before it keeps torch to one thread (app.batcher.serving_threads). There, one image at a
    time, beam 3, two threads made a request 3 ms faster at p50 than one (28 against 30.5 ms), for
    about 9 ms more CPU time, and left 8 clients' images/s as they were; the whole search as one
    graph (model.beam_graph) took 5.7-6.0 ms a caption on two threads, 7.2 on one (docs/performance.md)."""
    from model.encoder import openvino_core

    return openvino_core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    })


class PackedLinear(nn.Module):
    """A frozen bf16 nn.Linear whose weight oneDNN has laid out once for its matmul, as torch.compile's
    weight freezing does, instead of F.linear taking it as it is at every call.

    The same numbers as F.linear in bf16, bit for bit, and a row's output never depends on the other
    rows (tests/test_decoder.py); for the few rows of a beam-search step 1.6x faster on one thread
    and 2.5x on two (bench/beam.py)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().to(torch.bfloat16))  # [N, K], oneDNN's layout
        self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, K] bf16 -> [M, N] bf16
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
