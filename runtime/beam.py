"""Beam search batched over images and beams: one decoder step for all of them at once, either as
one OpenVINO graph (runtime.graph, on a CPU) or step by step in this module's loop
(runtime.decoder.ArrayStep: numpy, or torch on a GPU).

Row b * K + k of every [B * K, ...] array is beam k of image b. A finished beam stays in the
beam: it may only continue with <end> at no cost, so it keeps its score, competes with the live
ones, and no two beams ever hold the same sentence.

Constrained (guided) search, after Anderson et al. 2017, "Guided Open Vocabulary Image Captioning
with Constrained Beam Search": an image may name up to N constraints, each a set of words any of
which satisfies it ("dog", "dogs", "puppy"). A sentence's state is the set of constraints it has
met (a bitmask, S = 2^N states), and each state keeps its own K beams: the K best sentences with
exactly those constraints met. So each image has S groups of K rows, row (b * S + s) * K + k, and a
step fills each group from the candidates of every group whose state, with the new word, becomes
the group's (transitions). The caption comes from the group that has met the most constraints
(all of them, unless the sentence could not fit them in max_length words). With no constraints
S = 1, and it is plain beam search.

The search of an image is over once its target group (all its constraints met) holds K finished
sentences that every unfinished one already scores below: a word only lowers a score, so nothing
can displace them. With S = 1 that is the usual rule, every beam finished.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from runtime.decoder import ArrayStep
from runtime.graph import BeamGraph

Search = Union[BeamGraph, ArrayStep]  # the whole loop in one OpenVINO call, or one step at a time in _search


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # the words, without <start> and <end>
    log_prob: float  # sum of the log-probabilities of the words and of <end> when it was emitted
    score: float  # log_prob / length ** length_penalty: what the ranking uses


def beam_search(
    search: Search,
    features: np.ndarray,
    *,
    start_id: int,
    end_id: int,
    banned_ids: Sequence[int] = (),
    beam_size: int = 3,
    max_length: int = 20,
    num_captions: int = 1,
    length_penalty: float = 0.0,
    block_ngram: int = 0,
    constraints: Sequence[Sequence[Sequence[int]]] | None = None,
    state_beam_size: int | None = None,
) -> list[list[Hypothesis]]:
    """features [B, D] -> per image, the best `num_captions` distinct hypotheses, best first.

    A sentence has 1 to `max_length` words; one that reaches the limit without <end> is cut there.
    beam_size=1 is greedy decoding. length_penalty=0 ranks by the plain log-probability.
    block_ngram=n > 0 forbids a word that would repeat an n-gram already in the sentence
    ("a man in a red shirt and a red shirt" with n=3); 0 allows repeats.
    constraints: per image, the word-id sets its caption must each take a word from (the module's
    docstring); None or empty lists: none. state_beam_size: the beams each state of a constrained
    image keeps (None: beam_size); such an image gets at most that many hypotheses."""
    if not 1 <= num_captions <= beam_size:
        raise ValueError(f"num_captions must be between 1 and beam_size ({beam_size}), got {num_captions}")
    B, K = len(features), beam_size
    V = search.vocab_size
    constraints = constraints or [[] for _ in range(B)]
    if len(counts := {len(per_image) for per_image in constraints}) > 1:
        # Images with as many constraints searched together: with fewer, an image would carry the
        # others' extra groups, empty for it, through every step
        found: list[list[Hypothesis]] = [[] for _ in range(B)]
        for count in counts:
            rows = [b for b in range(B) if len(constraints[b]) == count]
            alike = beam_search(search, features[rows], start_id=start_id, end_id=end_id, banned_ids=banned_ids,
                                beam_size=beam_size, max_length=max_length, num_captions=num_captions,
                                length_penalty=length_penalty, block_ngram=block_ngram,
                                constraints=[constraints[b] for b in rows], state_beam_size=state_beam_size)
            for b, hypotheses in zip(rows, alike):
                found[b] = hypotheses
        return found
    if state_beam_size and any(constraints):
        K, num_captions = state_beam_size, min(num_captions, state_beam_size)
    transitions = _transitions(constraints, V)  # [B, S, S, V]
    S = transitions.shape[1]
    targets = np.array([2 ** len(per_image) - 1 for per_image in constraints], np.int64)  # [B]: all met

    # W_ih v once per image, then copied to its S * K rows
    state = search.start(search.image_gates(features), S * K)
    tokens = np.full(B * S * K, start_id, np.int64)  # [B*S*K]
    scores = np.full((B * S, K), -np.inf, np.float32)  # [B*S, K]: a row per group
    scores[::S, 0] = 0.0  # one live beam, in the state that has met nothing: the first step must not pick duplicates
    only_end = np.full(V, -np.inf, np.float32)
    only_end[end_id] = 0.0
    banned = np.zeros(V, np.float32)  # [V], added to every step's log-probabilities
    banned[list(banned_ids)] = -np.inf
    banned_first = banned.copy()
    banned_first[end_id] = -np.inf  # a caption has at least one word

    run = search.search if isinstance(search, BeamGraph) else functools.partial(_search, search)
    scores, histories = run(tokens, state, scores, transitions, targets, banned_first, banned, only_end, end_id, max_length,
                            block_ngram)
    scores = scores.reshape(B, S, K).tolist()
    best = []
    for b in range(B):
        groups = [_best(histories[(b * S + s) * K:(b * S + s + 1) * K], scores[b][s], end_id, num_captions, length_penalty)
                  for s in range(S)]
        # the group that met the most constraints, the best of equals (plain search: the one group)
        ranked = [(bin(s).count("1"), group[0].score, s) for s, group in enumerate(groups) if group]
        best.append(groups[max(ranked)[2]] if ranked else [])
    return best


def _transitions(constraints: Sequence[Sequence[Sequence[int]]], vocab_size: int) -> np.ndarray:
    """Per image, which state a word leads to from each state: [B, S (to), S (from), V], 0 where
    `from` with the word becomes `to`, -inf elsewhere. S = 2^N for the most constraints N of an image."""
    S = 2 ** max((len(per_image) for per_image in constraints), default=0)
    bits = np.zeros((len(constraints), vocab_size), np.int64)  # [B, V]: the constraints each word meets
    for b, per_image in enumerate(constraints):
        for j, words in enumerate(per_image):
            bits[b, list(words)] |= 1 << j
    states = np.arange(S)
    reached = states[None, :, None] | bits[:, None, :]  # [B, S (from), V]
    return np.where(reached[:, None] == states[None, :, None, None], 0.0, -np.inf).astype(np.float32)  # [B, S, S, V]


def _search(step: ArrayStep, tokens: np.ndarray, state, scores: np.ndarray, transitions: np.ndarray, targets: np.ndarray,
            banned_first: np.ndarray, banned: np.ndarray, only_end: np.ndarray, end_id: int, max_length: int,
            block_ngram: int) -> tuple[np.ndarray, list[list[int]]]:
    """The search's steps: tokens [B*S*K], the state, scores [B*S, K], transitions [B, S, S, V], each
    image's target group [B] and the bans [V] -> the beams' scores [B*S, K] and their words."""
    B, S = transitions.shape[:2]
    K = scores.shape[1]
    V = len(only_end)
    # The words of each row and whether it has ended live in Python lists: a step's bookkeeping is a
    # few list operations per beam instead of a dozen array operations.
    histories: list[list[int]] = [[] for _ in range(B * S * K)]
    finished = [False] * (B * S * K)
    for t in range(max_length):
        # Every row runs, finished beams and the first step's K alike beams included: a step reads the
        # weights once whatever the rows, so selecting the live ones cost more than it saved.
        log_probs, state = step.step(tokens, state)  # [B*S*K, V]
        log_probs = log_probs + (banned_first if t == 0 else banned)
        if block_ngram and t >= block_ngram:
            rows, words = _repeats(histories, finished, block_ngram)
            if rows:
                log_probs[rows, words] = -np.inf
        if any(finished):
            log_probs[[row for row, done in enumerate(finished) if done]] = only_end
        candidates = scores[:, :, None] + log_probs.reshape(B * S, K, V)  # [B*S, K, V]
        if S > 1:  # each group's candidates: every group's words that lead to its state
            candidates = candidates.reshape(B, 1, S, K, V) + transitions[:, :, :, None, :]  # [B, S, S, K, V]
        scores, flat = _topk(candidates.reshape(B * S, S * K * V), K)  # [B*S, K]
        rows, words = [], []
        for group, picks in enumerate(flat.tolist()):
            first_row = group // S * S * K  # the image's first row: reordering stays inside each image
            for pick in picks:
                parent, word = divmod(pick, V)
                rows.append(first_row + parent)
                words.append(word)
        histories = [histories[row] + [word] for row, word in zip(rows, words)]
        finished = [finished[row] or word == end_id for row, word in zip(rows, words)]
        state = step.select(state, rows)
        tokens = np.array(words, np.int64)
        if _over(scores.reshape(B, S, K), np.array(finished, bool).reshape(B, S, K), targets):
            break
    return scores, histories


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row, largest first, and their columns; of equals, the first columns."""
    columns = np.sort(np.argpartition(-x, k - 1, axis=1)[:, :k], axis=1)  # the k largest, in column order
    values = np.take_along_axis(x, columns, 1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(values, order, 1), np.take_along_axis(columns, order, 1)


def _over(scores: np.ndarray, finished: np.ndarray, targets: np.ndarray) -> bool:
    """Whether every image's search is over (the module's docstring): scores and finished [B, S, K], targets [B]."""
    unfinished = np.where(~finished & (scores > -np.inf), scores, -np.inf).max(axis=(1, 2))  # [B]
    images = np.arange(len(scores))
    target = scores[images, targets]  # [B, K]
    full = (finished[images, targets] & (target > -np.inf)).all(axis=1)
    return bool(((unfinished == -np.inf) | (full & (target.min(axis=1) >= unfinished))).all())


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
