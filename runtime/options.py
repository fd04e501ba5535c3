"""The choices that the command lines, the weights' manifests and the service share."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

DEFAULT_ENCODER = "efficientnet-lite0"
POOLINGS = ("head-mean", "grids", "head-mean+grids")  # how the CNN becomes v (model.encoder)
DEFAULT_POOLING = "head-mean"
RUNTIMES = ("auto", "onnxruntime", "openvino", "eager")  # what runs the CNN for training's features (model.encoder.use_runtime)
SERVING_RUNTIMES = ("auto", "openvino", "onnxruntime")  # what runs the exported CNN (runtime.cnn); auto: OpenVINO, else ONNX Runtime
DEVICES = ("auto", "cpu", "cuda")  # where the decoder's search runs (runtime.captioner.resolve_device)
PRECISIONS = ("auto", "int8", "bf16", "fp32")  # its matmuls (runtime.captioner.build_search); auto: int8 on a CPU, else bf16 where native, else fp32
VIEWS = ("plain", "flip", "zoom", "zoom-flip")  # how a training photo is seen before the CNN (model.features)


@dataclass(frozen=True)
class Decoding:
    """How beam search writes a caption. Chosen on the validation split and kept in the weights'
    manifest ("decoding"), so that the service and model.evaluate decode alike by default."""

    beam_size: int = 3
    length_penalty: float = 0.0  # rank finished beams by log p / length ** length_penalty
    block_ngram: int = 0  # no n-gram of this size twice in a caption (0: allowed)
    max_length: int = 20  # words
    consensus_weight: float = 0.0  # rerank the finished beams by log p + this * agreement (model.consensus); 0: off
    guided: bool = False  # the caption must say the first forced_tags tags (runtime.tags, runtime.beam's constrained search)
    tag_threshold: float = 0.5  # a tag is shown, and may be forced, from this calibrated probability on
    forced_tags: int = 1  # the most tags a guided caption must say, best first
    # the beams each state of a guided search keeps, at most beam_size (0: beam_size): a guided image
    # runs a group of beams per state, so its search costs what that many rows cost
    state_beam_size: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def but(self, **changes) -> Decoding:
        """A copy with the given fields changed; None leaves a field as it is."""
        return replace(self, **{name: value for name, value in changes.items() if value is not None})
