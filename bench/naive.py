"""The naive baseline the benchmarks compare against, the way the popular tutorials caption:
one image at a time, eager fp32 CNN on a fresh NCHW tensor, and beam search as a Python loop
over the beams of that one image, one decoder step per beam. Same weights, same answers
(up to ties), no batching of anything.
"""
from __future__ import annotations

import torch
from PIL import Image

from model.captioner import Captioner


@torch.inference_mode()
def naive_caption(captioner: Captioner, image: Image.Image, beam_size: int = 3, max_length: int = 20) -> tuple[str, float]:
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
