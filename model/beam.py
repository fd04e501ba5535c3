"""Beam search batched over images and beams: one decoder step for all of them at once.

Row b * K + k of every [B * K, ...] tensor is beam k of image b. A finished beam stays in the
beam: it may only continue with <end> at no cost, so it keeps its score, competes with the live
ones, and no two beams ever hold the same sentence.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.decoder import Decoder, State


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # the words, without <start> and <end>
    log_prob: float  # sum of the log-probabilities of the words and of <end> when it was emitted
    score: float  # log_prob / length ** length_penalty: what the ranking uses


@torch.inference_mode()
def beam_search(
    decoder: Decoder,
    features: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    banned_ids: Sequence[int] = (),
    beam_size: int = 3,
    max_length: int = 20,
    num_captions: int = 1,
    length_penalty: float = 0.0,
    block_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """features [B, D] -> per image, the best `num_captions` distinct hypotheses, best first.

    A sentence has 1 to `max_length` words; one that reaches the limit without <end> is cut there.
    beam_size=1 is greedy decoding. length_penalty=0 ranks by the plain log-probability.
    block_ngram=n > 0 forbids a word that would repeat an n-gram already in the sentence
    ("a man in a red shirt and a red shirt" with n=3); 0 allows repeats."""
    if not 1 <= num_captions <= beam_size:
        raise ValueError(f"num_captions must be between 1 and beam_size ({beam_size}), got {num_captions}")
    B, K = features.size(0), beam_size
    V = decoder.config.vocab_size
    device = features.device

    # W_ih v once per image, then copied to its K beams: rows b * K + k; in fp32 once here, not at every step
    state = tuple(part.float().repeat_interleave(K, dim=0) for part in decoder.start(features))
    tokens = torch.full((B * K,), start_id, dtype=torch.long, device=device)  # [B*K]
    scores = torch.full((B, K), float("-inf"), device=device)  # [B, K]
    scores[:, 0] = 0.0  # all beams start equal: keep one so the first step does not pick duplicates
    only_end = torch.full((V,), float("-inf"), device=device)
    only_end[end_id] = 0.0
    banned = torch.zeros(V, device=device)  # [V], added to every step's log-probabilities
    banned[list(banned_ids)] = float("-inf")
    banned_first = banned.clone()
    banned_first[end_id] = float("-inf")  # a caption has at least one word

    if decoder.beam_graph is not None:  # the int8 decoder: the whole loop in one OpenVINO call
        scores, histories = decoder.beam_graph.search(tokens, state, scores, banned_first, banned, only_end, end_id,
                                                      max_length, block_ngram)
    else:
        scores, histories = _search(decoder, tokens, state, scores, banned_first, banned, only_end, end_id, max_length,
                                    block_ngram)
    scores = scores.tolist()
    return [_best(histories[b * K:(b + 1) * K], scores[b], end_id, num_captions, length_penalty) for b in range(B)]


def _search(decoder: Decoder, tokens: torch.Tensor, state: State, scores: torch.Tensor, banned_first: torch.Tensor,
            banned: torch.Tensor, only_end: torch.Tensor, end_id: int, max_length: int, block_ngram: int
            ) -> tuple[torch.Tensor, list[list[int]]]:
    """The search's steps: tokens [B*K], the state, scores [B, K] and the bans [V] -> the beams'
    scores [B, K] and their words."""
    B, K = scores.shape
    V = only_end.numel()
    # The words of each row and whether it has ended live in Python lists: a step's bookkeeping is a
    # few list operations per beam instead of a dozen tensor operations of a few microseconds each.
    histories: list[list[int]] = [[] for _ in range(B * K)]
    finished = [False] * (B * K)
    for t in range(max_length):
        # Every row runs, finished beams and the first step's K alike beams included: a step reads the
        # weights once whatever the rows, so selecting the live ones cost more than it saved.
        log_probs, state = decoder.step(tokens, state)  # [B*K, V]
        log_probs = log_probs + (banned_first if t == 0 else banned)
        if block_ngram and t >= block_ngram:
            rows, words = _repeats(histories, finished, block_ngram)
            if rows:
                log_probs[rows, words] = float("-inf")
        if any(finished):
            log_probs[[row for row, done in enumerate(finished) if done]] = only_end
        candidates = (scores[:, :, None] + log_probs.view(B, K, V)).view(B, K * V)  # [B, K*V]
        scores, flat = candidates.topk(K, dim=1)  # [B, K]
        rows, words = [], []
        for b, picks in enumerate(flat.tolist()):
            for pick in picks:
                parent, word = divmod(pick, V)
                rows.append(b * K + parent)  # reordering stays inside each image
                words.append(word)
        histories = [histories[row] + [word] for row, word in zip(rows, words)]
        finished = [finished[row] or word == end_id for row, word in zip(rows, words)]
        recurrent, c, image_gates = state
        index = torch.tensor(rows, dtype=torch.long, device=tokens.device)  # long also when there are no images
        state = (recurrent[index], c[index], image_gates)  # each image's gate term is the same for all its rows
        tokens = torch.tensor(words, dtype=torch.long, device=tokens.device)
        if all(finished):
            break
    return scores, histories


def _repeats(histories: list[list[int]], finished: list[bool], n: int) -> tuple[list[int], list[int]]:
    """The (row, word) pairs where the word would end an n-gram that the row's unfinished sentence already holds."""
    rows, words = [], []
    for row, sentence in enumerate(histories):
        if finished[row]:  # it may only add <end>, at no cost
            continue
        last = sentence[len(sentence) - n + 1:]  # the n-1 words a next word would follow
        for start in range(len(sentence) - n + 1):
            if sentence[start:start + n - 1] == last:
                rows.append(row)
                words.append(sentence[start + n - 1])
    return rows, words


def _best(
    sequences: list[list[int]], log_probs: list[float], end_id: int, num_captions: int, length_penalty: float
) -> list[Hypothesis]:
    hypotheses = []
    for sequence, log_prob in zip(sequences, log_probs):
        if log_prob == float("-inf"):  # fewer possible sentences than beams
            continue
        words = sequence[: sequence.index(end_id)] if end_id in sequence else sequence
        length = len(words) + (end_id in sequence)
        hypotheses.append(Hypothesis(words, log_prob, log_prob / max(length, 1) ** length_penalty))
    hypotheses.sort(key=lambda h: h.score, reverse=True)
    return hypotheses[:num_captions]
