"""Captioner: encoder + decoder + vocabulary behind one call, shared by the service and the scripts."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image

from model.beam import beam_search
from model.confidence import Calibration
from model.consensus import ConsensusReranker
from model.decoder import MATMUL_DTYPES, PRECISION_NAMES, Decoder
from model.encoder import Encoder, build_encoder, one_line
from model.options import Decoding
from model.tags import Tag, TagCalibration, Tagger, TagMapError
from model.vocab import Vocab, tokenize
from model.weights import WeightsError, load_reranker, load_tag_map, load_weights

logger = logging.getLogger("captioner")
Captions = list[list[tuple[str, float]]]  # per image: (text, log_prob), best first


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """"auto" is int8 on a CPU (weights in int8, run by OpenVINO's compressed-weight matmul: the
    fastest beam search there, dev CIDEr within 1% of fp32's, docs/performance.md); on a GPU bf16 where it
    multiplies in it (Ampere and later), else fp32. native_precision is what a CPU falls back to."""
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"int8 decoder weights run on the CPU only, not on {device}: use bf16 or fp32")
    if precision == "auto":
        return torch.int8 if device.type == "cpu" else native_precision(device)
    return MATMUL_DTYPES[precision]


def native_precision(device: torch.device) -> torch.dtype:
    """bf16 where the hardware multiplies in it (AVX512-BF16 CPUs, Ampere and later GPUs): elsewhere
    bf16 matmuls are emulated and slower than fp32."""
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.cpu._is_avx512_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def precisions_to_try(dtype: torch.dtype, device: torch.device) -> list[torch.dtype]:
    """dtype, then what takes its place if it cannot be built or checked here: int8 gives way to the
    native precision, bf16 to fp32 (which always builds)."""
    chain = [dtype]
    if dtype == torch.int8:
        chain.append(native_precision(device))
    if chain[-1] == torch.bfloat16:
        chain.append(torch.float32)
    return chain


def describe(decoder: Decoder, vocab: Vocab, features: torch.Tensor, decoding: Decoding, num_captions: int = 1,
             reranker: ConsensusReranker | None = None, tagger: Tagger | None = None,
             tags: list[list[Tag]] | None = None) -> Captions:
    """Beam search from image features [B, D] to texts; with decoding.consensus_weight, all finished
    beams reranked by the reranker; with decoding.guided and a tagger, each caption says the
    photo's first decoding.forced_tags tags (those at decoding.tag_threshold or above; `tags`, if
    the caller has them already)."""
    if decoding.consensus_weight and reranker is None:
        raise ValueError("this decoding reranks by consensus, but no reranker was given")
    constraints = None
    if decoding.guided and tagger is not None:
        tags = tagger.tags(features, decoding.tag_threshold) if tags is None else tags
        constraints = tagger.constraints(tags, decoding.forced_tags)
    hypotheses = beam_search(
        decoder,
        features,
        start_id=vocab.start_id,
        end_id=vocab.end_id,
        banned_ids=(vocab.pad_id, vocab.start_id, vocab.unk_id),  # <unk> is never shown, the others are not words
        beam_size=decoding.beam_size,
        max_length=decoding.max_length,
        num_captions=decoding.beam_size if decoding.consensus_weight else num_captions,
        length_penalty=decoding.length_penalty,
        block_ngram=decoding.block_ngram,
        constraints=constraints,
    )
    captions = [[(vocab.decode(h.tokens), h.log_prob) for h in per_image] for per_image in hypotheses]
    if decoding.consensus_weight:
        captions = [per_image[:num_captions] for per_image in reranker.rerank(features, captions, decoding.consensus_weight)]
    return captions


class Captioner:
    def __init__(self, encoder: Encoder, decoder: Decoder, vocab: Vocab, manifest: dict,
                 reranker: ConsensusReranker | None = None, tag_map: dict | None = None):
        if manifest.get("encoder", {}).get("fingerprint") != encoder.fingerprint:
            raise WeightsError(
                f"these weights were trained on features of encoder {manifest.get('encoder', {}).get('fingerprint')!r}, "
                f"but the encoder here is {encoder.fingerprint!r}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.vocab = vocab
        self.reranker = reranker
        self.manifest = manifest
        self.model_id = manifest["model_id"]
        self.decoding = Decoding(**manifest.get("decoding", {}))  # the serving defaults
        self.calibration = Calibration.from_manifest(manifest)  # None: the weights were never calibrated
        if reranker is not None and reranker.feature_mean.numel() != encoder.feature_dim:
            raise WeightsError(f"the consensus reranker reads {reranker.feature_mean.numel()}-d image vectors, "
                               f"but the encoder gives {encoder.feature_dim}-d ones: fit it again (python -m model.fit_reranker)")
        self.device = next(decoder.parameters()).device
        self.tagger, self.no_tags_reason = None, None
        if tag_map is None:
            self.no_tags_reason = "these weights have no tag map (python -m model.tag_map): captions are plain, without tags"
        elif encoder.classifier is None:
            self.no_tags_reason = f"encoder {encoder.name} with {encoder.pooling} pooling has no classifier on v: no tags"
        else:
            try:
                calibration = TagCalibration(**manifest.get("tags", {}).get("calibration", {}))
                self.tagger = Tagger(encoder.classifier, tag_map, calibration, vocab.index)
            except TagMapError as error:
                raise WeightsError(f"tags.json: {error}") from None
        if self.no_tags_reason:
            logger.warning("tags: none: %s", self.no_tags_reason)

    @classmethod
    def load(
        cls, directory: str | Path = "weights", device: str | torch.device = "auto", precision: str = "auto",
        runtime: str = "auto",
    ) -> Captioner:
        """The decoder's matmuls run in `precision` (auto, int8, bf16 or fp32: resolve_precision);
        one that cannot be built here, or whose int8 layers fail their check against fp32, gives way
        (precisions_to_try) with one log line each. The CNN runs through `runtime`
        (model.encoder.use_runtime)."""
        device = resolve_device(device)
        decoder, vocab, manifest = load_weights(directory)
        reranker = load_reranker(directory, manifest)
        tag_map = load_tag_map(directory, manifest)
        encoder = manifest.get("encoder", {})
        if not encoder.get("name") or not encoder.get("pooling"):
            raise WeightsError(f"{Path(directory) / 'manifest.json'} names no encoder and pooling")
        decoder = decoder.to(device)
        chain = precisions_to_try(resolve_precision(precision, device), device)
        for dtype, instead in zip(chain, chain[1:] + [None]):
            try:
                decoder.for_inference(dtype)
                break
            except Exception as error:  # OpenVINO missing or failing, a CPU without the kernel: raised before changing the decoder
                if instead is None:
                    raise
                logger.warning("decoder precision: %s, not %s: %s", PRECISION_NAMES[instead], PRECISION_NAMES[dtype], one_line(error))
        return cls(build_encoder(encoder["name"], device, encoder["pooling"], runtime), decoder, vocab, manifest, reranker,
                   tag_map)

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encoder.encode(images)  # [B, D]

    def describe(self, features: torch.Tensor, decoding: Decoding | None = None, num_captions: int = 1,
                 tags: list[list[Tag]] | None = None) -> Captions:
        """decoding: the weights' own (self.decoding) unless given; tags: self.tags(features, decoding), if known."""
        return describe(self.decoder, self.vocab, features.to(self.device), decoding or self.decoding, num_captions,
                        self.reranker, self.tagger, tags)

    def tags(self, features: torch.Tensor, decoding: Decoding | None = None) -> list[list[Tag]]:
        """Per image, what the CNN's classifier sees (model.tags), best first; none for weights without a tag map."""
        if self.tagger is None:
            return [[] for _ in range(features.size(0))]
        return self.tagger.tags(features, (decoding or self.decoding).tag_threshold)

    def caption(self, images: list[Image.Image], decoding: Decoding | None = None, num_captions: int = 1) -> Captions:
        return self.describe(self.encode(images), decoding, num_captions)

    def agreements(self, features: torch.Tensor, captions: Captions) -> list[list[float | None]]:
        """Per image and caption, its agreement with the consensus predicted for the image
        (model.consensus); None each for weights without a reranker."""
        if self.reranker is None:
            return [[None] * len(per_image) for per_image in captions]
        return self.reranker.agreement(features, [[tokenize(text) for text, _ in per_image] for per_image in captions])

    def confidences(self, features: torch.Tensor, captions: Captions) -> list[list[float]] | None:
        """Per image and caption, the calibrated probability that the caption is acceptable
        (model.confidence); None for weights never calibrated."""
        if self.calibration is None:
            return None
        return [[self.calibration.confidence(log_prob, text, agreement) for (text, log_prob), agreement in zip(*pair)]
                for pair in zip(captions, self.agreements(features, captions))]
