"""Export what a CPU serves with, without torch, into a weights folder: the CNN as ONNX and its tensors.

    python -m model.export --weights weights

model.train runs it on the weights it saves; run it by hand once on a folder saved before the
runtime served without torch (the service names this command when it meets one). It writes
cnn.onnx (pixels [B, 3, size, size] -> v [B, D], the batch norms folded), and cnn.safetensors:
the CNN's ImageNet classifier on v where it has one (tags), and a probe, PROBE_IMAGES random
photos' pixels with the features eager PyTorch gives for them, which the runtime checks each of its
CNN runtimes against at load (runtime.cnn). Both are listed with their sha256 in the manifest
("files"), with an "export" section: the preprocessing and the encoder's fingerprint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("model.export", __doc__)
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="the weights folder to export into")
    return parser


if __name__ == "__main__":  # --help answers before torch loads
    build_parser().parse_args(sys.argv[1:])

import numpy as np
import torch
from safetensors.numpy import save_file

from model.encoder import export_onnx, recorded_encoder
from runtime.files import atomic_write, sha256_file
from runtime.weights import CNN_GRAPH_FILE, CNN_TENSORS_FILE, MANIFEST_FILE, WeightsError, verify, write_manifest

PROBE_IMAGES = 2


def export(directory: str | Path) -> dict:
    """Write the CNN's graph and tensors into a verified weights folder and list them; returns the manifest."""
    directory = Path(directory)
    manifest = verify(directory)
    encoder = recorded_encoder(directory, manifest, runtime="eager")
    size = encoder.preprocessing.size
    pixels = torch.rand(PROBE_IMAGES, 3, size, size, generator=torch.Generator().manual_seed(0)) * 4 - 2  # about the normalised range
    with torch.inference_mode():
        tensors = {"probe.pixels": pixels, "probe.features": encoder.trunk(pixels).float()}
        if encoder.classifier is not None:
            tensors |= {"classifier.weight": encoder.classifier.weight, "classifier.bias": encoder.classifier.bias}
    graph = export_onnx(encoder.trunk, size)
    atomic_write(directory / CNN_GRAPH_FILE, lambda tmp: Path(tmp).write_bytes(graph))
    arrays = {name: np.ascontiguousarray(tensor.detach().float().numpy()) for name, tensor in tensors.items()}
    atomic_write(directory / CNN_TENSORS_FILE, lambda tmp: save_file(arrays, tmp))
    for name in (CNN_GRAPH_FILE, CNN_TENSORS_FILE):
        manifest["files"][name] = sha256_file(directory / name)
    manifest["export"] = {"fingerprint": encoder.fingerprint, "preprocessing": encoder.preprocessing.to_dict(),
                          "feature_dim": encoder.feature_dim, "classifier": encoder.classifier is not None,
                          "exported_with": f"torch {torch.__version__.split('+')[0]}"}
    write_manifest(directory, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        manifest = export(args.weights)
    except (WeightsError, FileNotFoundError) as error:
        parser.exit(2, f"error: {error}\n")
    sizes = ", ".join(f"{name} {(args.weights / name).stat().st_size / 2**20:.1f} MB" for name in (CNN_GRAPH_FILE, CNN_TENSORS_FILE))
    print(f"{args.weights}: {manifest['model_id']} exported ({sizes}); listed in {MANIFEST_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
