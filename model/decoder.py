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

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.decoder import FrozenDecoder

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # W_h h [N, 4H], c [N, H], W_ih v + b [N, 4H]


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

        The state carries W_h h rather than h, as the runtime's (runtime.decoder): sampling reorders
        no rows, but the two share the step's form."""
        N, H = features.size(0), self.config.hidden_dim
        return features.new_zeros(N, 4 * H), features.new_zeros(N, H), self.w_image(features)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One word for each of N sentences: tokens [N] -> next-word log-probabilities [N, V], new state.
        In training mode the dropout falls where teacher forcing has it (self-critical training)."""
        recurrent, c, image_gates = state
        gates = image_gates.float() + self.w_word(self.dropout(self.embed(tokens))) + recurrent  # [N, 4H]
        h, c = self._cell(gates, c)
        logits = self.out(self.dropout(h))  # the output layer sees h through dropout, W_h does not
        return F.log_softmax(logits.float(), dim=-1), (self.w_hidden(h), c, image_gates)

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

    def frozen(self) -> FrozenDecoder:
        """The decoder as the runtime decodes with it (runtime.decoder), from its weights now."""
        return FrozenDecoder.from_state({name: tensor.detach().float().cpu().numpy() for name, tensor in self.state_dict().items()})

    @staticmethod
    def _cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = gates.chunk(4, dim=1)  # [N, 4H] -> 4 x [N, H]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
