"""Training speed: seconds per decoder epoch at Flickr8k size, and features/s of the extraction pass,
each against its naive baseline.

    python -m bench.train [--epochs-fraction 0.1] [--extract-images 64]

Decoder: random features [--images, D] (D: the default encoder's feature size) and
--captions-per-image random captions per image of 8-20 words (plus <start> and <end>) over a
--vocab-size vocabulary, in memory: Flickr8k's shape without its pictures. The defaults are
Flickr8k's training split as model.train reads it: 6,000 photos, and 2,538 words (special tokens
included) kept by --min-count 5, the shipped weights' vocabulary; --vocab-size 8000 is about every
word kept.
Each configuration trains for --epochs-fraction of an epoch after 2 untimed steps, with
model.train.train_step (all-pad columns dropped, gradient clipping at 1); seconds per epoch are
extrapolated from the mean step. Configurations:
  ours            model.decoder.Decoder (W_ih v hoisted out of the recurrence, output layer on the
                  real targets only), fused AdamW, bf16 autocast
  ours, fp32      the same without autocast: what bf16 alone is worth
  naive           bench.naive.FusedLSTMDecoder (nn.LSTM over [x_t ; v], output layer on every
                  position), per-tensor AdamW, fp32

Extraction: --extract-images PIL-made 640x480 JPEG files in a temporary folder; ours is
model.features.extract_features (batches of 8, channels-last, one loader process) into a fresh
cache folder, naive is bench.naive.naive_features (one image per CNN call, NCHW weights).
"""
from __future__ import annotations

import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.common import parser, photo_jpeg, positive, print_table, write_json
from bench.naive import FusedLSTMDecoder, naive_encoder, naive_features
from model.decoder import Decoder, DecoderConfig
from model.encoder import build_encoder
from model.features import extract_features
from model.train import make_optimizer, train_step
from runtime.captioner import resolve_device
from runtime.options import DEFAULT_ENCODER, DEVICES
from runtime.vocab import SPECIALS, Vocab

WARMUP_STEPS = 2  # the first steps allocate and pick kernels; an epoch has hundreds of steps
SPECIAL = Vocab([*SPECIALS])  # only for the ids of <pad>, <start>, <end>


def synthetic_captions(images: int, per_image: int, vocab_size: int, generator: torch.Generator) -> TensorDataset:
    """(feature row, tokens) pairs as model.train.caption_tensors makes them: <start> w1..wn <end> <pad>..,
    n from 8 to 20 random words that are never special tokens."""
    rows = torch.arange(images).repeat_interleave(per_image)  # [N]
    lengths = torch.randint(8, 21, (len(rows),), generator=generator)  # [N]
    words = torch.randint(len(SPECIALS), vocab_size, (len(rows), 20), generator=generator)  # [N, 20]
    tokens = torch.full((len(rows), 22), SPECIAL.pad_id)  # [N, 22]: <start>, at most 20 words, <end>
    tokens[:, 0] = SPECIAL.start_id
    tokens[:, 1:21] = torch.where(torch.arange(20)[None, :] < lengths[:, None], words, SPECIAL.pad_id)
    tokens[torch.arange(len(rows)), lengths + 1] = SPECIAL.end_id
    return TensorDataset(rows, tokens)


def seconds_per_epoch(model: torch.nn.Module, features: torch.Tensor, pairs: TensorDataset, batch_size: int,
                      fraction: float, bf16: bool, naive: bool) -> tuple[float, int]:
    """Shuffled batches through model.train.train_step, with model.train's fused AdamW or, naive, the
    per-tensor AdamW of the tutorials; timed over `fraction` of an epoch -> (seconds per epoch, steps timed)."""
    device = features.device
    model = model.to(device).train()
    if naive:
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4, foreach=False)
    else:
        optimizer = make_optimizer(model, lr=2e-3, weight_decay=1e-4)  # model/train.py's defaults
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=True)
    batches = itertools.cycle(loader)  # a fraction above 1 goes round again

    def step() -> None:
        rows, tokens = (t.to(device) for t in next(batches))
        train_step(model, optimizer, features[rows], tokens, SPECIAL.pad_id, bf16, clip=1.0)

    for _ in range(WARMUP_STEPS):
        step()
    steps = max(1, math.ceil(fraction * len(loader)))
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps * len(loader), steps


def synchronize(device: torch.device) -> None:
    """On a GPU, wait for the queued kernels, so that the clock measures them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = parser("train", __doc__, weights=False)
    p.add_argument("--images", type=positive, default=6000, help="images in the synthetic training set (default 6000, as Flickr8k's train split)")
    p.add_argument("--captions-per-image", type=positive, default=5, help="(default 5, as Flickr8k)")
    p.add_argument("--vocab-size", type=int, default=2538,
                   help="words, special tokens included (default 2538: Flickr8k's training words seen 5 times or more)")
    p.add_argument("--embed-dim", type=positive, default=256, help="(default 256, as model.train)")
    p.add_argument("--hidden-dim", type=positive, default=512, help="(default 512, as model.train)")
    p.add_argument("--batch-size", type=positive, default=128, help="captions per step (default 128, as model.train)")
    p.add_argument("--epochs-fraction", type=float, default=0.1, help="part of an epoch to time (default 0.1)")
    p.add_argument("--extract-images", type=positive, default=64, help="JPEG files for the extraction pass (default 64)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto: cuda where torch sees a GPU, else cpu")
    args = p.parse_args(argv)
    if args.vocab_size <= len(SPECIALS):
        p.error(f"--vocab-size must be above {len(SPECIALS)} (the special tokens)")
    if args.epochs_fraction <= 0:
        p.error("--epochs-fraction must be positive")
    device = torch.device(resolve_device(args.device))
    encoder = build_encoder(DEFAULT_ENCODER, device)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(args.images, encoder.feature_dim, generator=generator).to(device)
    pairs = synthetic_captions(args.images, args.captions_per_image, args.vocab_size, generator)
    config = DecoderConfig(args.vocab_size, encoder.feature_dim, args.embed_dim, args.hidden_dim, pad_id=SPECIAL.pad_id)

    training = {}
    for name, model, bf16, naive in [("ours", Decoder(config), True, False), ("ours_fp32", Decoder(config), False, False),
                                     ("naive", FusedLSTMDecoder(config), False, True)]:
        print(f"training, {name}: {args.epochs_fraction:g} of an epoch of {len(pairs)} captions ...", flush=True)
        seconds, steps = seconds_per_epoch(model, features, pairs, args.batch_size, args.epochs_fraction, bf16, naive)
        training[name] = {"seconds_per_epoch": round(seconds, 2), "steps_timed": steps, "bf16": bf16}

    print(f"extraction: {args.extract_images} JPEG files, ours then naive ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as folder:
        paths = [Path(folder) / f"{i:04d}.jpg" for i in range(args.extract_images)]
        for i, path in enumerate(paths):
            path.write_bytes(photo_jpeg(seed=i))
        extract_features(encoder, paths[:8], Path(folder) / "warmup-cache")  # loads kernels and the loader's imports
        started = time.perf_counter()
        table = extract_features(encoder, paths, Path(folder) / "cache")
        ours_per_s = len(table.paths) / (time.perf_counter() - started)
        nchw_encoder = naive_encoder(build_encoder(DEFAULT_ENCODER, device, runtime="eager"))
        naive_features(nchw_encoder, paths[:1])
        started = time.perf_counter()
        naive_features(nchw_encoder, paths)
        naive_per_s = len(paths) / (time.perf_counter() - started)
    extraction = {"images": args.extract_images, "ours_per_s": round(ours_per_s, 2), "naive_per_s": round(naive_per_s, 2)}

    ratios = {
        "training_naive_over_ours": round(training["naive"]["seconds_per_epoch"] / training["ours"]["seconds_per_epoch"], 2),
        "training_fp32_over_bf16": round(training["ours_fp32"]["seconds_per_epoch"] / training["ours"]["seconds_per_epoch"], 2),
        "extraction_ours_over_naive": round(ours_per_s / naive_per_s, 2),
    }
    ours_epoch = training["ours"]["seconds_per_epoch"]
    print_table(
        f"decoder epoch: {args.images} images x {args.captions_per_image} captions, vocabulary {args.vocab_size}, "
        f"hidden {args.hidden_dim}, embed {args.embed_dim}, batch {args.batch_size}, {device}",
        ["", "s/epoch", "x ours"],
        [["ours (hoisted W_ih v, real targets, fused AdamW, bf16)", ours_epoch, 1.0],
         ["ours, fp32", training["ours_fp32"]["seconds_per_epoch"], ratios["training_fp32_over_bf16"]],
         ["naive (nn.LSTM over [x; v], fp32)", training["naive"]["seconds_per_epoch"], ratios["training_naive_over_ours"]]],
    )
    print_table(
        f"feature extraction: {args.extract_images} 640x480 JPEG files, {device}",
        ["", "images/s", "ours/naive"],
        [["ours (extract_features, batches of 8)", extraction["ours_per_s"], ratios["extraction_ours_over_naive"]],
         ["naive (one image per CNN call)", extraction["naive_per_s"], 1.0]],
    )
    write_json(args.json, {
        "benchmark": "train",
        "device": str(device),
        "data": {"images": args.images, "captions_per_image": args.captions_per_image, "vocab_size": args.vocab_size,
                 "words_per_caption": [8, 20]},
        "decoder": {"embed_dim": args.embed_dim, "hidden_dim": args.hidden_dim, "batch_size": args.batch_size,
                    "epochs_fraction": args.epochs_fraction},
        "training": training,
        "extraction": extraction,
        "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
