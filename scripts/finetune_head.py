"""Does fine-tuning the CNN's last convolution with the decoder give a better v? An ablation, not a
training entry point: it prints validation scores and saves nothing.

    python scripts/finetune_head.py --data ../shared/data/flickr8k                       # head and decoder from the start
    python scripts/finetune_head.py --data ../shared/data/flickr8k --init weights --epochs 4 --lr 1e-4 --head-lr 1e-4 --warmup-epochs 0.2

v is the mean over the image of EfficientNet-Lite0's head: a 1x1 convolution from the last block's
320 channels to 1,280, then ReLU6. Here that convolution (initialised from the pretrained one, so
that v starts exactly as the service computes it) trains together with the decoder, with its own
learning rate, on the last block's maps [49, 320] of each photo, computed once (eager PyTorch, about
2 minutes for Flickr8k) and held in memory. Everything else is model.train's cross-entropy recipe:
AdamW, warm-up then cosine decay, label smoothing, bf16 autocast, gradient clipping, and after each
epoch beam search on the validation split. With --init it starts from a trained weights folder (its
decoder, vocabulary and decoding) instead of a new decoder.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

from model.data import DatasetFormatError, load_dataset, report_skipped
from model.decoder import Decoder, DecoderConfig
from model.encoder import build_encoder
from model.features import FeatureTable, extract_features
from model.train import caption_tensors, lr_lambda, train_step, validate
from model.weights import load_weights
from runtime.options import Decoding
from runtime.vocab import Vocab
from runtime.weights import WeightsError


class HeadAndDecoder(nn.Module):
    """maps [B, 49, 320] -> v [B, 1280] through the trainable head -> the decoder's loss."""

    def __init__(self, conv_head: nn.Conv2d, activation: nn.Module, decoder: Decoder):
        super().__init__()
        self.head = nn.Linear(conv_head.in_channels, conv_head.out_channels)
        with torch.no_grad():
            self.head.weight.copy_(conv_head.weight.flatten(1))  # [1280, 320, 1, 1] -> [1280, 320]
            self.head.bias.copy_(conv_head.bias)  # the BatchNorm folded into it (model.encoder.fold_batch_norms)
        self.activation = activation
        self.decoder = decoder

    def image_vectors(self, maps: torch.Tensor) -> torch.Tensor:
        return self.activation(self.head(maps)).mean(1)  # [B, 49, 320] -> [B, 1280]

    def forward(self, maps: torch.Tensor, tokens: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        return self.decoder(self.image_vectors(maps), tokens, label_smoothing)


def last_block_maps(encoder, paths: list[Path], batch_size: int = 16) -> torch.Tensor:
    """[N, 49, 320]: the input of the head's convolution for each photo, caught by a hook on the trunk."""
    caught = []
    hook = encoder.trunk.net._conv_head.register_forward_hook(lambda _, inputs, __: caught.append(inputs[0]))
    try:
        for start in range(0, len(paths), batch_size):
            photos = []
            for path in paths[start:start + batch_size]:
                with Image.open(path) as image:
                    photos.append(image.convert("RGB"))
            encoder.encode(photos)
    finally:
        hook.remove()
    return torch.cat([m.flatten(2).transpose(1, 2).float() for m in caught])  # [B, 320, 7, 7] -> [B, 49, 320]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/finetune_head.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a photo dataset with train and val splits")
    parser.add_argument("--init", type=Path, help="start from this trained weights folder (default: a new decoder)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs (20)")
    parser.add_argument("--lr", type=float, default=2e-3, help="the decoder's peak learning rate (2e-3, model.train's)")
    parser.add_argument("--head-lr", type=float, default=2e-4, help="the head's peak learning rate (2e-4)")
    parser.add_argument("--warmup-epochs", type=float, default=0.5, help="linear warm-up, then cosine decay (0.5)")
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="as the shipped weights (0.1)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order (0)")
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="model.train's CNN feature cache (default: cache)")
    args = parser.parse_args(argv)
    try:
        dataset = load_dataset(args.data)
        init = load_weights(args.init) if args.init else None
    except (DatasetFormatError, WeightsError) as error:
        parser.error(str(error))
    train_items, val_items = dataset.split("train"), dataset.split("val")
    if not train_items or not val_items:
        parser.error(f"{args.data} needs a train and a val split")

    encoder = build_encoder(runtime="eager")  # Lite0, head-mean: the shipped encoder
    # The pooled features (model.train's cache) say which photos are readable and check the maps.
    table = extract_features(encoder, [item.image_path for item in train_items + val_items], args.cache_dir)
    report_skipped(table.skipped)
    started = time.time()
    maps = last_block_maps(encoder, table.paths)  # [N, 49, 320], rows as table.paths
    rows = table.rows()
    print(f"last-block maps of {len(maps)} photos in {time.time() - started:.0f} s", flush=True)

    torch.manual_seed(args.seed)
    if init is not None:
        decoder, vocab, manifest = init
        # No consensus reranking: the reranker reads the v it was fitted on, which the head moves
        decoding = Decoding(**manifest.get("decoding", {})).but(consensus_weight=0.0)
    else:
        vocab = Vocab.build(c for item in train_items for c in item.captions)
        decoder = Decoder(DecoderConfig(len(vocab), encoder.feature_dim, pad_id=vocab.pad_id))
        decoding = Decoding(beam_size=3, block_ngram=3)  # the shipped weights' decoding
    net = encoder.trunk.net
    model = HeadAndDecoder(net._conv_head, net._swish, decoder)
    with torch.no_grad():
        drift = (model.image_vectors(maps[:64]) - table.features[:64]).norm() / table.features[:64].norm()
    assert drift < 1e-4, f"v from the maps differs from the encoder's by {drift:.1e}"

    examples = caption_tensors(train_items, rows, vocab, max_words=30)
    loader = DataLoader(examples, batch_size=128, shuffle=True)
    optimizer = torch.optim.AdamW([{"params": decoder.parameters(), "lr": args.lr},
                                   {"params": model.head.parameters(), "lr": args.head_lr}], weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(args.warmup_epochs * len(loader)), args.epochs * len(loader)))
    val_paths = [item.image_path for item in val_items if item.image_path in rows]
    for epoch in range(args.epochs):
        epoch_start, total, count = time.time(), 0.0, 0
        model.train()
        for batch_rows, tokens, _ in loader:  # the weights are all 1: no --consensus-weighting here
            loss = train_step(model, optimizer, maps[batch_rows], tokens, vocab.pad_id, bf16=True, clip=1.0,
                              label_smoothing=args.label_smoothing)
            scheduler.step()
            total, count = total + loss.item() * len(batch_rows), count + len(batch_rows)
        model.eval()
        with torch.no_grad():
            val_v = model.image_vectors(maps[[rows[path] for path in val_paths]])
        scores = validate(decoder, vocab, FeatureTable(val_v, val_paths, []), val_items, decoding)
        head_moved = ((model.head.weight - net._conv_head.weight.flatten(1)).norm() / net._conv_head.weight.norm()).item()
        print(json.dumps({"epoch": epoch + 1, "loss": round(total / count, 4), "val_BLEU-4": round(scores["BLEU-4"], 4),
                          "val_CIDEr": round(scores["CIDEr"], 4), "head_moved": round(head_moved, 4),
                          "seconds": round(time.time() - epoch_start, 1)}), flush=True)


if __name__ == "__main__":
    main()
