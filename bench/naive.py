"""The naive baselines the benchmarks compare against, the way the popular tutorials do it.

naive_caption: one image at a time, eager fp32 CNN on a fresh NCHW tensor, and beam search as a
Python loop over the beams of that one image, one decoder step per beam. Same weights, same
answers (up to ties), no batching of anything, no bf16. Give it naive_captioner(weights);
naive_seconds times it as bench.latency and bench.throughput do, which import this module (and
torch with it) only once they have timed the service, whose CPU path runs without torch.

naive_features: feature extraction one image at a time, the same eager fp32 CNN call, with an
encoder from naive_encoder.

FusedLSTMDecoder: the decoder trained as one nn.LSTM over the inputs [x_t ; v], which recomputes
W_ih v at every step (model/decoder.py computes it once per sentence); trained in fp32.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from bench.common import MAX_PIXELS, repeat_timed
from model.decoder import Decoder, DecoderConfig
from model.encoder import Encoder, build_encoder
from model.weights import load_weights
from runtime.images import decode_image
from runtime.vocab import Vocab


def naive_encoder(encoder: Encoder) -> Encoder:
    """A copy with the CNN weights in PyTorch's default NCHW layout. model.encoder.build_encoder's
    are channels-last, and a convolution follows its weights' layout: with those, an NCHW input
    alone would still run channels-last. The BatchNorms stay folded, as build_encoder makes them:
    that only makes the baseline faster and the ratios smaller."""
    return copy.deepcopy(encoder).to(memory_format=torch.contiguous_format)


@dataclass
class NaiveCaptioner:
    encoder: Encoder  # eager fp32, NCHW
    decoder: Decoder  # fp32, as trained
    vocab: Vocab
    device: torch.device


def naive_captioner(weights: Path, device: str) -> NaiveCaptioner:
    """The weights at `weights` as trained, for naive_caption, on device (cpu or cuda: the service's,
    runtime.captioner.resolve_device): the fp32 torch decoder and an eager NCHW CNN (naive_encoder)."""
    device = torch.device(device)
    decoder, vocab, manifest = load_weights(weights)
    encoder = naive_encoder(build_encoder(manifest["encoder"]["name"], device, manifest["encoder"]["pooling"], runtime="eager"))
    return NaiveCaptioner(encoder, decoder.to(device), vocab, device)


def naive_seconds(naive: NaiveCaptioner, jpeg: bytes, beam_size: int, repeats: int) -> list[float]:
    """The naive baseline per image: the service's own PIL decode, then naive_caption."""
    return repeat_timed(lambda: naive_caption(naive, decode_image(jpeg, MAX_PIXELS), beam_size), repeats)


@torch.inference_mode()
def naive_caption(captioner: NaiveCaptioner, image: Image.Image, beam_size: int = 3, max_length: int = 20) -> tuple[str, float]:
    encoder, decoder, vocab = captioner.encoder, captioner.decoder, captioner.vocab
    pixels = encoder.transform(image.convert("RGB"))[None].to(captioner.device)  # [1, 3, 224, 224]
    feature = encoder.trunk(pixels)  # [1, D]
    banned = [vocab.pad_id, vocab.start_id, vocab.unk_id]
    beams = [([], 0.0, decoder.start(feature), vocab.start_id)]  # (words, log_prob, state, last token)
    finished = []
    for t in range(max_length):
        candidates = []
        for words, log_prob, state, last in beams:
            log_probs, new_state = decoder.step(torch.tensor([last], device=captioner.device), state)
            log_probs[0, banned] = float("-inf")
            if t == 0:
                log_probs[0, vocab.end_id] = float("-inf")
            top = log_probs[0].topk(beam_size)
            for value, word in zip(top.values.tolist(), top.indices.tolist()):
                candidates.append((words + [word], log_prob + value, new_state, word))
        candidates.sort(key=lambda c: c[1], reverse=True)
        beams = []
        for words, log_prob, state, last in candidates[:beam_size]:
            if last == vocab.end_id:
                finished.append((words[:-1], log_prob))
            else:
                beams.append((words, log_prob, state, last))
        if not beams or (finished and max(f[1] for f in finished) > beams[0][1]):
            break
    finished += [(words, log_prob) for words, log_prob, _, _ in beams]
    words, log_prob = max(finished, key=lambda f: f[1])
    return vocab.decode(words), log_prob


@torch.inference_mode()
def naive_features(encoder: Encoder, paths: list[Path]) -> torch.Tensor:
    """Pooled CNN features [N, D] of the images at `paths`, one image per CNN call."""
    device = next(encoder.parameters()).device
    rows = []
    for path in paths:
        with Image.open(path) as image:
            rows.append(encoder.trunk(encoder.transform(image.convert("RGB"))[None].to(device)))  # [1, D]
    return torch.cat(rows)


class FusedLSTMDecoder(nn.Module):
    """model.decoder.Decoder's model and forward signature, as one nn.LSTM over [x_t ; v]."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_id)
        self.lstm = nn.LSTM(config.embed_dim + config.feature_dim, config.hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden_dim, config.vocab_size)
        self.pad_id = config.pad_id

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """features [B, D], tokens [B, T] -> the mean cross-entropy of predicting tokens[:, 1:], with
        logits at every position, padding included, as the tutorials do."""
        words = self.dropout(self.embed(tokens[:, :-1]))  # [B, T-1, E]
        image = self.dropout(features)[:, None, :].expand(-1, words.size(1), -1)  # [B, T-1, D]: v at every step
        hidden, _ = self.lstm(torch.cat([words, image], dim=2))  # [B, T-1, H]
        logits = self.out(self.dropout(hidden))  # [B, T-1, V]
        targets = tokens[:, 1:].flatten()
        return F.cross_entropy(logits.flatten(0, 1), targets, ignore_index=self.pad_id, label_smoothing=label_smoothing)
