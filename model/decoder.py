"""The LSTM caption decoder, conditioned on the image vector v at every step.

With x_t the embedding of word t and v the encoder's pooled image feature, the gates are

    i, f, g, o = split(W_x x_t + W_h h_{t-1} + W_ih v + b)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)
    p(w_{t+1} | w_<=t, v) = softmax(W_out dropout(h_t) + b_out)

the LSTM form of the seed's h_t = tanh(W_hh h_{t-1} + W_xh x_t + W_ih v). Training runs it as one
fused nn.LSTM (cuDNN on the GPU) over the inputs [x_t ; v], whose input weight is [W_x | W_ih].
Decoding, one step at a time, slices that same weight: W_ih v + b is computed once per image
and reused at every step, so beam search pays for the image only once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # h [N, H], c [N, H], W_ih v + b [N, 4H]


@dataclass
class DecoderConfig:
    vocab_size: int
    feature_dim: int = 1280
    embed_dim: int = 256
    hidden_dim: int = 512
    dropout: float = 0.3
    pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def sequence_loss(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of logits [B, T-1, V] against tokens[:, 1:] over the non-pad targets."""
    targets = tokens[:, 1:]  # [B, T-1]
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id, label_smoothing=label_smoothing)


class Decoder(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_id)
        self.lstm = nn.LSTM(config.embed_dim + config.feature_dim, config.hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden_dim, config.vocab_size)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: features [B, D], tokens [B, T] (<start> w1 .. <end> <pad>..) -> logits [B, T-1, V]
        predicting tokens[:, 1:] from tokens[:, :-1]."""
        inputs = tokens[:, :-1]  # [B, T-1]
        lengths = (tokens[:, 1:] != self.config.pad_id).sum(dim=1)  # [B]: one input per real target, <end> is never fed
        x = self.dropout(self.embed(inputs))  # [B, T-1, E]
        v = self.dropout(features)[:, None, :].expand(-1, inputs.size(1), -1)  # [B, T-1, D]
        packed = pack_padded_sequence(torch.cat([x, v], dim=2), lengths.cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=inputs.size(1))  # [B, T-1, H]
        return self.out(self.dropout(hidden))  # [B, T-1, V]

    # Step-by-step decoding, used by beam search.

    def start(self, features: torch.Tensor) -> State:
        """features [N, D] -> the zero state plus the per-image gate term W_ih v + b [N, 4H]."""
        w_image = self.lstm.weight_ih_l0[:, self.config.embed_dim :]  # [4H, D]
        image_gates = features @ w_image.T + self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0  # [N, 4H]
        zeros = features.new_zeros(features.size(0), self.config.hidden_dim)  # [N, H]
        return zeros, zeros, image_gates

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens [N] -> log-probabilities of the next word [N, V] and the new state."""
        h, c, image_gates = state
        w_word = self.lstm.weight_ih_l0[:, : self.config.embed_dim]  # [4H, E]
        gates = self.embed(tokens) @ w_word.T + h @ self.lstm.weight_hh_l0.T + image_gates  # [N, 4H]
        i, f, g, o = gates.chunk(4, dim=1)  # nn.LSTM's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return F.log_softmax(self.out(h), dim=-1), (h, c, image_gates)
