"""What one step of beam search costs with the shipped vocabulary, and where it goes.

    python -m bench.beam [--weights weights] [--photos docs/examples] [--repeats 2000]

For one image at the weights' beam size (the rows a step runs, as in the service), for each search
the runtime can run (runtime.captioner.build_search): the whole search as one OpenVINO graph
(runtime.graph.BeamGraph), its matmuls in int8 (the default on a CPU) or in fp32; runtime.beam's
Python loop around a numpy fp32 step (runtime.decoder.ArrayStep, where OpenVINO cannot run); and,
where torch is installed, the same loop around a torch step in bf16 (runtime.gpu.torch_step, as
CAPTIONER_DECODER_PRECISION=bf16 runs it on a CPU). A whole step (ArrayStep.step; for a graph, a
call of its search that runs one step), its one matmul alone (the recurrent W_h h and the output
layer stacked, [beams, H] x [H, 4H + V]; for a graph, its node compiled alone), and the weight bytes
each step reads. Then whole captions: beam search on the service's features of each of --photos
(runtime.captioner.describe, with the weights' reranker, as the service), median ms per caption
and the mean words per caption (a caption of n words takes at least n + 1 steps). Last, the one
matmul for batches of 1 to 16 images, as the service batches them under load: a few rows cost
what reading the weights costs, many rows what the arithmetic costs.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import ROOT, load_photos, parser, positive, print_table, repeat_timed, write_json
from runtime.beam import Search
from runtime.captioner import Captioner, describe
from runtime.cnn import cpu_threads
from runtime.decoder import ArrayStep, FrozenDecoder
from runtime.graph import BeamGraph, layer_request

BATCHED_IMAGES = (1, 4, 8, 16)  # the service batches about 1, 4 and 8 images at 1, 8 and 16 clients; 16 is its most
WEIGHT_BYTES = {"int8": 1, "bf16": 2, "fp32": 4}


def median_us(call: Callable[[], object], repeats: int) -> float:
    return statistics.median(repeat_timed(call, repeats)) * 1e6


def searches(decoder: FrozenDecoder) -> dict[str, Search]:
    """Every search this machine can run the decoder in, by name."""
    found = {"int8 graph": BeamGraph(decoder, "int8"), "fp32 graph": BeamGraph(decoder, "fp32"), "fp32 numpy": ArrayStep(decoder)}
    if importlib.util.find_spec("torch") is not None:
        from runtime.gpu import torch_step

        found["bf16 torch"] = torch_step(decoder, "cpu", "bf16")
    return found


def one_step(search: Search, features: np.ndarray, tokens: np.ndarray) -> Callable[[], object]:
    """A whole step for the beams of one image (features [1, D]), each beam at its word of tokens
    [beams]: ArrayStep.step, or a graph's search of one step (BeamGraph.one_step: the call's own cost included)."""
    state = search.start(search.image_gates(features), len(tokens))
    if isinstance(search, BeamGraph):
        return lambda: search.one_step(tokens, state, images=1)
    return lambda: search.step(tokens, state)


def stacked_matmul(search: Search, decoder: FrozenDecoder) -> Callable[[int], Callable[[], object]]:
    """rows -> a call of the search's one matmul of a step, h [rows, H] x [H, 4H + V], as the search runs
    it: a graph's node (runtime.graph) compiled alone, or ArrayStep's matmul in its array library."""
    generator = np.random.default_rng(0)

    def h(rows: int) -> np.ndarray:  # a cell's output, in (-1, 1)
        return generator.uniform(-1, 1, (rows, decoder.hidden_dim)).astype(np.float32)

    if isinstance(search, BeamGraph):
        request = layer_request(decoder.stacked, decoder.stacked_bias, search.precision)

        def graph_call(rows: int) -> Callable[[], object]:
            inputs = [h(rows)]
            return lambda: request.infer(inputs)
        return graph_call

    def array_call(rows: int) -> Callable[[], object]:
        x = search.xp.astype(search.asarray(h(rows)), search.matmul_dtype)
        return lambda: x @ search.stacked_t + search.stacked_bias
    return array_call


def main(argv: list[str] | None = None) -> int:
    p = parser("beam", __doc__, weights=True)
    p.add_argument("--photos", type=Path, default=ROOT / "docs" / "examples", help="photos captioned (default: docs/examples)")
    p.add_argument("--repeats", type=positive, default=2000, help="timed calls of each part (default 2000)")
    args = p.parse_args(argv)
    # The CNN, vocabulary, reranker (a caption costs what it costs in the service: reranking
    # included) and decoding as the service loads them; the searches are built here, one of each
    captioner = Captioner.load(args.weights, "cpu")
    vocab, decoding = captioner.vocab, captioner.decoding.but(beam_size=args.beam_size)
    beams = decoding.beam_size
    all_features = captioner.encode(load_photos(args.photos))  # [P, D]
    features = all_features[:1]  # the step's parts: the first photo
    decoder = FrozenDecoder.load(args.weights)
    tokens = np.arange(beams) + vocab.unk_id + 1  # a word per beam

    rows, batched_rows = [], []
    results = {"weights": captioner.model_id, "vocabulary": len(vocab), "beams": beams, "parts_us": {}}
    for name, search in searches(decoder).items():
        matmul = stacked_matmul(search, decoder)
        parts = {"step": median_us(one_step(search, features, tokens), args.repeats),
                 "matmul": median_us(matmul(beams), args.repeats)}
        weight_bytes = decoder.stacked.size * WEIGHT_BYTES[search.precision]
        caption_ms = statistics.median(
            seconds for row in np.split(all_features, len(all_features))
            for seconds in repeat_timed(lambda: describe(search, vocab, row, decoding, reranker=captioner.reranker), 10)
        ) * 1e3
        words = statistics.mean(len(best[0][0].split())
                                for best in describe(search, vocab, all_features, decoding, reranker=captioner.reranker))
        matmul_by_images = {images: median_us(matmul(images * beams), args.repeats) for images in BATCHED_IMAGES}
        results["parts_us"][name] = {**parts, "weight_bytes_per_step": weight_bytes, "caption_ms": caption_ms,
                                     "words_per_caption": words, "matmul_by_images": matmul_by_images}
        rows.append([name, parts["step"], parts["matmul"], parts["step"] - parts["matmul"], f"{weight_bytes / 2**20:.2f}",
                     caption_ms, words])
        batched_rows.append([name, *matmul_by_images.values()])
    print_table(f"beam search step, {beams} beams, {len(vocab)} words, {cpu_threads()} threads (us)",
                ["search", "step", "W_h h and output layer", "rest of step", "weight MiB/step", "caption ms", "words"], rows)
    print_table(f"W_h h and output layer for a batch of 1 to {BATCHED_IMAGES[-1]} images ({beams} rows each), "
                f"{cpu_threads()} threads (us)", ["search", *map(str, BATCHED_IMAGES)], batched_rows)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
