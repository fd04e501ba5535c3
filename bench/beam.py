"""What one step of beam search costs with the shipped vocabulary, and where it goes.

    python -m bench.beam [--weights weights] [--photos docs/examples] [--repeats 2000]

For one image at the weights' beam size (the rows a step runs, as in the service), with the
decoder's matmuls in each precision the service can run them in (CAPTIONER_DECODER_PRECISION):
int8 (the default on a CPU), bf16 and fp32. A whole step (model.decoder.Decoder.step), its one
matmul alone (the recurrent W_h h and the output layer stacked, [beams, H] x [H, 4H + V]), and
the weight bytes each step reads. Then whole captions: beam search on the features of each of
--photos (model.captioner.describe, as the service: in int8 its loop is one OpenVINO graph,
model.beam_graph, which runs the same step inside OpenVINO), median ms per caption and the mean
words per caption (a caption of n words takes at least n + 1 steps). Last, the one matmul for batches
of 1 to 16 images, as the service batches them under load: a few rows cost what reading the
weights costs, many rows what the arithmetic costs.
"""
from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch

from bench.common import ROOT, load_photos, parser, positive, print_table, repeat_timed, write_json
from model.captioner import describe
from model.encoder import build_encoder
from model.options import Decoding
from model.weights import load_reranker, load_weights


BATCHED_IMAGES = (1, 4, 8, 16)  # the service batches about 1, 4 and 8 images at 1, 8 and 16 clients; 16 is its most


def median_us(call, repeats: int) -> float:
    with torch.inference_mode():
        return statistics.median(repeat_timed(call, repeats)) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = parser("beam", __doc__, weights=True)
    p.add_argument("--photos", type=Path, default=ROOT / "docs" / "examples", help="photos captioned (default: docs/examples)")
    p.add_argument("--repeats", type=positive, default=2000, help="timed calls of each part (default 2000)")
    args = p.parse_args(argv)
    trained, vocab, manifest = load_weights(args.weights)
    reranker = load_reranker(args.weights, manifest)  # a caption costs what it costs in the service: reranking included
    decoding = Decoding(**manifest.get("decoding", {})).but(beam_size=args.beam_size)
    beams = decoding.beam_size
    encoder = build_encoder(manifest["encoder"]["name"], pooling=manifest["encoder"]["pooling"], runtime="eager")
    all_features = encoder.encode(load_photos(args.photos))  # [P, D]
    features = all_features[:1]  # the step's parts: the first photo

    rows, batched_rows = [], []
    results = {"weights": manifest["model_id"], "vocabulary": len(vocab), "beams": beams, "parts_us": {}}
    for name, dtype in (("int8", torch.int8), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        decoder = copy.deepcopy(trained).for_inference(dtype)  # for_inference works in place
        with torch.inference_mode():
            state = tuple(part.float().repeat_interleave(beams, 0) for part in decoder.start(features))
        tokens = torch.arange(beams) + vocab.unk_id + 1
        h = torch.zeros(beams, decoder.config.hidden_dim, dtype=decoder.matmul_dtype)
        parts = {
            "step": median_us(lambda: decoder.step(tokens, state), args.repeats),
            "matmul": median_us(lambda: decoder.w_hidden_and_out(h), args.repeats),
        }
        weight = decoder.w_hidden_and_out.weight
        weight_bytes = weight.numel() * weight.element_size()
        caption_ms = statistics.median(
            seconds for row in all_features.split(1) for seconds in repeat_timed(lambda: describe(decoder, vocab, row, decoding, reranker=reranker), 10)
        ) * 1e3
        words = statistics.mean(len(best[0][0].split()) for best in describe(decoder, vocab, all_features, decoding, reranker=reranker))
        batched_h = {images: h.repeat(images, 1) for images in BATCHED_IMAGES}  # [images * beams, H]
        matmul_by_images = {images: median_us(lambda: decoder.w_hidden_and_out(batched_h[images]), args.repeats)
                            for images in BATCHED_IMAGES}
        results["parts_us"][name] = {**parts, "weight_bytes_per_step": weight_bytes, "caption_ms": caption_ms,
                                     "words_per_caption": words, "matmul_by_images": matmul_by_images}
        rows.append([name, parts["step"], parts["matmul"], parts["step"] - parts["matmul"], f"{weight_bytes / 2**20:.2f}",
                     caption_ms, words])
        batched_rows.append([name, *matmul_by_images.values()])
    print_table(f"beam search step, {beams} beams, {len(vocab)} words, {torch.get_num_threads()} threads (us)",
                ["weights", "step", "W_h h and output layer", "rest of step", "weight MiB/step", "caption ms", "words"], rows)
    print_table(f"W_h h and output layer for a batch of 1 to {BATCHED_IMAGES[-1]} images ({beams} rows each), "
                f"{torch.get_num_threads()} threads (us)", ["weights", *map(str, BATCHED_IMAGES)], batched_rows)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
