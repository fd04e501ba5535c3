"""Captioner: the CNN, the decoder's search and the vocabulary behind one call, as the service runs
them, from a weights folder, with no torch on a CPU.

On a CPU the CNN is the exported graph (runtime.cnn) and the whole beam search one OpenVINO graph
(runtime.graph), its matmuls in int8, or in fp32 where int8 cannot be built or checked here; where
OpenVINO cannot run at all, the CNN runs in ONNX Runtime and the search step by step in numpy.
Each step down is one log line. On a GPU (the gpu extra: torch), the search runs in torch on CUDA
(runtime.gpu) and the CNN on the CPU as above.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.beam import Search, beam_search
from runtime.cnn import CNN, one_line
from runtime.confidence import Calibration
from runtime.consensus import ConsensusReranker
from runtime.decoder import ArrayStep, FrozenDecoder
from runtime.graph import BeamGraph
from runtime.options import DEVICES, PRECISIONS, Decoding
from runtime.preprocess import Preprocessing
from runtime.tags import Tag, TagCalibration, Tagger, TagMapError
from runtime.vocab import Vocab, tokenize
from runtime.weights import (
    CNN_GRAPH_FILE, VOCAB_FILE, WeightsError, load_cnn_tensors, load_reranker, load_tag_map, require_export, verify,
)

logger = logging.getLogger("captioner")
Captions = list[list[tuple[str, float]]]  # per image: (text, log_prob), best first


def describe(search: Search, vocab: Vocab, features: np.ndarray, decoding: Decoding, num_captions: int = 1,
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
        search,
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
        # never fewer beams than the captions asked for
        state_beam_size=max(min(decoding.state_beam_size or decoding.beam_size, decoding.beam_size), num_captions),
    )
    captions = [[(vocab.decode(h.tokens), h.log_prob) for h in per_image] for per_image in hypotheses]
    if decoding.consensus_weight:
        captions = [per_image[:num_captions] for per_image in reranker.rerank(features, captions, decoding.consensus_weight)]
    return captions


def resolve_device(device: str = "auto") -> str:
    """auto: cuda where torch is installed and sees a GPU, else cpu. Without an NVIDIA driver torch is
    not even imported: a CPU service never loads it."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device != "auto":
        return device
    from runtime.gpu import cuda_available

    return "cuda" if cuda_available() else "cpu"


def build_search(decoder: FrozenDecoder, device: str, precision: str) -> Search:
    """The decoder's search on `device` in `precision` (PRECISIONS); what cannot be built or checked
    here gives way to the next, with one log line: on a CPU int8, then fp32, as one OpenVINO graph,
    then numpy's loop; on a GPU, torch's loop (runtime.gpu)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown decoder precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if device == "cuda" or precision == "bf16":
        from runtime.gpu import torch_step

        return torch_step(decoder, device, precision)
    chain = ["int8", "fp32"] if precision in ("auto", "int8") else ["fp32"]
    for graph_precision in chain:
        try:
            return BeamGraph(decoder, graph_precision)
        except Exception as error:  # OpenVINO missing or failing, a CPU without the kernel, a drifting graph
            instead = f"{chain[chain.index(graph_precision) + 1]} graph" if graph_precision != chain[-1] else "numpy's fp32 loop"
            logger.warning("decoder: %s, not the %s graph: %s", instead, graph_precision, one_line(error))
    return ArrayStep(decoder)


class Captioner:
    def __init__(self, cnn: CNN, preprocessing: Preprocessing, search: Search, vocab: Vocab, manifest: dict,
                 reranker: ConsensusReranker | None = None, tagger: Tagger | None = None, no_tags_reason: str | None = None,
                 device: str = "cpu"):
        self.cnn = cnn
        self.preprocessing = preprocessing
        self.search = search
        self.vocab = vocab
        self.reranker = reranker
        self.tagger = tagger
        self.no_tags_reason = no_tags_reason
        self.manifest = manifest
        self.model_id = manifest["model_id"]
        self.device = device
        self.decoding = Decoding(**manifest.get("decoding", {}))  # the serving defaults
        self.calibration = Calibration.from_manifest(manifest)  # None: the weights were never calibrated

    @property
    def runtime(self) -> str:
        """What runs the CNN: openvino-bf16, openvino-fp32 or onnxruntime."""
        return self.cnn.runtime

    @property
    def precision(self) -> str:
        """What the decoder's matmuls run in: int8, fp32 (graphs, numpy) or bf16 (torch)."""
        return self.search.precision

    @classmethod
    def load(cls, directory: str | Path = "weights", device: str = "auto", precision: str = "auto",
             runtime: str = "auto") -> Captioner:
        """Verify the folder, then load it: the CNN through `runtime` (auto, openvino or
        onnxruntime: runtime.cnn), the decoder's search on `device` in `precision` (build_search).
        NotExported for a folder saved before this runtime, naming the command that converts it."""
        directory = Path(directory)
        manifest = verify(directory)
        export = require_export(directory, manifest)
        decoder = FrozenDecoder.load(directory)
        if export["feature_dim"] != decoder.image_weight.shape[1]:
            raise WeightsError(f"the exported CNN gives {export['feature_dim']}-d vectors, the decoder reads "
                               f"{decoder.image_weight.shape[1]}-d ones")
        vocab = Vocab.load(directory / VOCAB_FILE)
        if len(vocab) != decoder.vocab_size:
            raise WeightsError(f"{directory / VOCAB_FILE} has {len(vocab)} words, the decoder {decoder.vocab_size}")
        reranker = load_reranker(directory, manifest)
        if reranker is not None and len(reranker.feature_mean) != decoder.image_weight.shape[1]:
            raise WeightsError(f"the consensus reranker reads {len(reranker.feature_mean)}-d image vectors, but the CNN "
                               f"gives {decoder.image_weight.shape[1]}-d ones: fit it again (python -m model.fit_reranker)")
        tensors = load_cnn_tensors(directory)
        tagger, no_tags_reason = None, None
        tag_map = load_tag_map(directory, manifest)
        if tag_map is None:
            no_tags_reason = "these weights have no tag map (python -m model.tag_map): captions are plain, without tags"
        elif "classifier.weight" not in tensors:
            no_tags_reason = f"encoder {manifest['encoder'].get('name')} with {manifest['encoder'].get('pooling')} pooling " \
                             "has no classifier on v: no tags"
        else:
            try:
                calibration = TagCalibration(**manifest.get("tags", {}).get("calibration", {}))
                tagger = Tagger((tensors["classifier.weight"], tensors["classifier.bias"]), tag_map, calibration, vocab.index)
            except TagMapError as error:
                raise WeightsError(f"tags.json: {error}") from None
        if no_tags_reason:
            logger.warning("tags: none: %s", no_tags_reason)
        device = resolve_device(device)
        cnn = CNN.load(directory / CNN_GRAPH_FILE, (tensors["probe.pixels"], tensors["probe.features"]), runtime)
        return cls(cnn, Preprocessing.from_dict(export["preprocessing"]), build_search(decoder, device, precision), vocab,
                   manifest, reranker, tagger, no_tags_reason, device)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A photo -> the CNN's pixels [3, size, size] (runtime.preprocess)."""
        return self.preprocessing.pixels(image)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.cnn(pixels)  # [B, 3, size, size] -> [B, D]

    def encode(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_pixels(np.stack([self.preprocess(image) for image in images]))  # [B, D]

    def describe(self, features: np.ndarray, decoding: Decoding | None = None, num_captions: int = 1,
                 tags: list[list[Tag]] | None = None) -> Captions:
        """decoding: the weights' own (self.decoding) unless given; tags: self.tags(features, decoding), if known."""
        return describe(self.search, self.vocab, features, decoding or self.decoding, num_captions, self.reranker,
                        self.tagger, tags)

    def tags(self, features: np.ndarray, decoding: Decoding | None = None) -> list[list[Tag]]:
        """Per image, what the CNN's classifier sees (runtime.tags), best first; none for weights without a tag map."""
        if self.tagger is None:
            return [[] for _ in range(len(features))]
        return self.tagger.tags(features, (decoding or self.decoding).tag_threshold)

    def caption(self, images: list[Image.Image], decoding: Decoding | None = None, num_captions: int = 1) -> Captions:
        return self.describe(self.encode(images), decoding, num_captions)

    def agreements(self, features: np.ndarray, captions: Captions) -> list[list[float | None]]:
        """Per image and caption, its agreement with the consensus predicted for the image
        (runtime.consensus); None each for weights without a reranker."""
        if self.reranker is None:
            return [[None] * len(per_image) for per_image in captions]
        return self.reranker.agreement(features, [[tokenize(text) for text, _ in per_image] for per_image in captions])

    def confidences(self, features: np.ndarray, captions: Captions) -> list[list[float]] | None:
        """Per image and caption, the calibrated probability that the caption is acceptable
        (runtime.confidence); None for weights never calibrated."""
        if self.calibration is None:
            return None
        return [[self.calibration.confidence(log_prob, text, agreement) for (text, log_prob), agreement in zip(*pair)]
                for pair in zip(captions, self.agreements(features, captions))]
