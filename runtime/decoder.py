"""The trained LSTM decoder as the runtime runs it: its tensors (decoder.safetensors), frozen for decoding.

model.decoder trains it; this reads the same file with numpy. Frozen, W_x is folded into the word
table (a step looks up a row of W_x E [V, 4H] instead of running a matmul) and W_h is stacked on
the output layer, so that a step runs one matmul, whose cost is reading the weights:

    gates = W_x E[w] + W_h h + (W_ih v + b)        the state carries W_h h, c and W_ih v + b
    i, f, g, o = split(gates);  c = sigmoid(f) c + sigmoid(i) tanh(g);  h = sigmoid(o) tanh(c)
    [W_h h', logits] = h [W_h; W_out]^T + [0; b_out]

The search runs this step in one of two ways: as the body of one OpenVINO graph (runtime.graph,
the CPU's), or in runtime.beam's Python loop (ArrayStep: numpy where OpenVINO cannot run; torch
on a GPU, through the same code by the array API).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from array_api_compat import array_namespace

DECODER_FILE = "decoder.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class FrozenDecoder:
    word_gates: np.ndarray  # [V, 4H]: W_x E
    image_weight: np.ndarray  # [4H, D]: W_ih
    image_bias: np.ndarray  # [4H]: b
    stacked: np.ndarray  # [4H + V, H]: W_h over W_out
    stacked_bias: np.ndarray  # [4H + V]: 0 over b_out
    end_of_recurrent: int  # 4H: where the logits start in a row of the stacked layer's output

    @property
    def vocab_size(self) -> int:
        return len(self.word_gates)

    @property
    def hidden_dim(self) -> int:
        return self.end_of_recurrent // 4

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> FrozenDecoder:
        """From the decoder's state dict (model.decoder.Decoder's parameter names)."""
        state = {name: np.asarray(tensor, np.float32) for name, tensor in state.items()}
        recurrent = state["w_hidden.weight"]  # [4H, H]
        return cls(
            word_gates=state["embed.weight"] @ state["w_word.weight"].T,
            image_weight=state["w_image.weight"], image_bias=state["w_image.bias"],
            stacked=np.concatenate([recurrent, state["out.weight"]]),
            stacked_bias=np.concatenate([np.zeros(len(recurrent), np.float32), state["out.bias"]]),
            end_of_recurrent=len(recurrent),
        )

    @classmethod
    def load(cls, directory: str | Path) -> FrozenDecoder:
        from safetensors.numpy import load_file

        return cls.from_state(load_file(Path(directory) / DECODER_FILE))


def read_config(directory: str | Path) -> dict:
    return json.loads((Path(directory) / CONFIG_FILE).read_text())


def quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """weight [N, K] fp32 -> int8 [N, K] and one scale per output [N, 1]: symmetric, the largest |w| of a row at 127."""
    scale = np.maximum(np.abs(weight).max(1, keepdims=True), 1e-12) / 127  # [N, 1]
    return np.rint(weight / scale).astype(np.int8), scale.astype(np.float32)


class ArrayStep:
    """One step of the decoder in an array library, for runtime.beam's loop: numpy (asarray=np.asarray) on a
    CPU, or torch on a GPU (runtime.gpu), the same code through the array API. The matmuls run in
    matmul_dtype (the library's bf16 or fp32), the cell and the log-probabilities in fp32."""

    def __init__(self, decoder: FrozenDecoder, asarray=np.asarray, matmul_dtype=None):
        self.asarray = asarray
        self.word_gates = asarray(decoder.word_gates)
        self.xp = array_namespace(self.word_gates)
        self.matmul_dtype = matmul_dtype or self.word_gates.dtype
        self.image_weight_t, self.image_bias = (self.xp.astype(asarray(array), self.matmul_dtype)
                                                for array in (decoder.image_weight.T.copy(), decoder.image_bias))
        self.stacked_t, self.stacked_bias = (self.xp.astype(asarray(array), self.matmul_dtype)
                                             for array in (decoder.stacked.T.copy(), decoder.stacked_bias))
        self.end_of_recurrent = decoder.end_of_recurrent
        self.vocab_size = decoder.vocab_size
        self.precision = "bf16" if "bfloat16" in str(self.matmul_dtype) else "fp32"  # what the service reports

    def image_gates(self, features: np.ndarray):
        """features [B, D] -> W_ih v + b [B, 4H], fp32."""
        x = self.xp.astype(self.asarray(np.asarray(features, np.float32)), self.matmul_dtype)
        return self.xp.astype(x @ self.image_weight_t + self.image_bias, self.xp.float32)

    def start(self, image_gates, rows_per_image: int):
        return zero_state(image_gates, rows_per_image)

    def step(self, tokens: np.ndarray, state):
        """tokens [N] -> next-word log-probabilities [N, V] (numpy, fp32) and the new state."""
        xp = self.xp
        recurrent, c, image_gates = state
        gates = image_gates + self.word_gates[self.asarray(tokens)] + recurrent  # [N, 4H]
        H = self.end_of_recurrent // 4
        i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
        c = _sigmoid(xp, f) * c + _sigmoid(xp, i) * xp.tanh(g)
        h = _sigmoid(xp, o) * xp.tanh(c)
        both = xp.astype(xp.astype(h, self.matmul_dtype) @ self.stacked_t + self.stacked_bias, xp.float32)  # [N, 4H + V]
        logits = both[:, self.end_of_recurrent:]
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
        return np.asarray(_to_numpy(log_probs)), (both[:, : self.end_of_recurrent], c, image_gates)

    def select(self, state, rows: list[int]):
        """The state of the rows picked, in order; each image's gate term is the same for all its rows."""
        index = self.asarray(np.asarray(rows, np.int64))
        recurrent, c, image_gates = state
        return recurrent[index], c[index], image_gates


def zero_state(image_gates, rows_per_image: int):
    """The state a search starts from, in image_gates' array library, for rows_per_image rows of each
    image: W_h h [N, 4H] and c [N, H] at zero, and each image's W_ih v + b [B, 4H] repeated [N, 4H]."""
    xp, (B, G) = array_namespace(image_gates), image_gates.shape
    repeated = xp.reshape(xp.broadcast_to(image_gates[:, None, :], (B, rows_per_image, G)), (B * rows_per_image, G))
    zeros = xp.zeros_like(repeated)
    return zeros, zeros[:, : G // 4], repeated


def _sigmoid(xp, x):
    return 1 / (1 + xp.exp(-x))


def _to_numpy(array):
    return array.cpu().numpy() if hasattr(array, "cpu") else array
