"""The weights folder as the runtime reads it: the manifest, its check, and what the service loads.

manifest.json records the sha256 of every other file; verify() checks each one and refuses a
missing or changed file. Nothing here unpickles: safetensors, JSON and the CNN's ONNX graph only.
model.weights writes the folder, model.export adds what a CPU serves with (the CNN as ONNX and its
tensors, EXPORT_FILES).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.confidence import Calibration
from runtime.consensus import RERANKER_FILE, ConsensusReranker
from runtime.decoder import CONFIG_FILE, DECODER_FILE
from runtime.files import atomic_write, sha256_file
from runtime.tags import TAGS_FILE, read_tag_map

VOCAB_FILE = "vocab.json"
MANIFEST_FILE = "manifest.json"
CNN_GRAPH_FILE = "cnn.onnx"  # the CNN, pixels [B, 3, size, size] -> v [B, D]
CNN_TENSORS_FILE = "cnn.safetensors"  # its ImageNet classifier on v (tags) and the probe that checks a runtime at load
EXPORT_FILES = (CNN_GRAPH_FILE, CNN_TENSORS_FILE)
REQUIRED_FILES = (DECODER_FILE, VOCAB_FILE, CONFIG_FILE)
OPTIONAL_FILES = (RERANKER_FILE, TAGS_FILE, *EXPORT_FILES)
CONVERT_COMMAND = "pip install 'captioner[train]' && python -m model.export --weights {directory}"


class WeightsError(RuntimeError):
    """The weights folder is missing a file, or a file does not match its manifest."""


class NotExported(WeightsError):
    """The weights folder has no exported CNN: it was saved before the runtime served without torch."""


def model_id(decoder_sha256: str) -> str:
    """The name every caption is labelled with: the decoder's, from its file's sha256."""
    return f"captioner-{decoder_sha256[:12]}"


def write_manifest(directory: str | Path, manifest: dict) -> None:
    """Atomically: a kill mid-write must not leave half a manifest, which would refuse to load for good."""
    atomic_write(Path(directory) / MANIFEST_FILE, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise WeightsError(f"{path} is missing: {directory} is not a captioner weights folder")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path} is not valid JSON: {error}") from error


def verify(directory: str | Path) -> dict:
    """Check every file against the manifest; return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    expected = manifest.get("files")
    if not isinstance(expected, dict) or not set(REQUIRED_FILES) <= set(expected) <= {*REQUIRED_FILES, *OPTIONAL_FILES}:
        raise WeightsError(f"{directory / MANIFEST_FILE} does not list the sha256 of {', '.join(REQUIRED_FILES)} "
                           f"(and of {', '.join(OPTIONAL_FILES)}, if there are) and nothing else")
    if manifest.get("decoding", {}).get("consensus_weight") and RERANKER_FILE not in expected:
        raise WeightsError(f"{directory / MANIFEST_FILE}: its decoding reranks by consensus, but it lists no {RERANKER_FILE} "
                           "(fit one with python -m model.fit_reranker)")
    calibration = Calibration.from_manifest(manifest)
    if calibration and calibration.uses_agreement and RERANKER_FILE not in expected:
        raise WeightsError(f"{directory / MANIFEST_FILE}: the caption confidence was calibrated with a consensus reranker, "
                           f"but it lists no {RERANKER_FILE}")
    if (CNN_GRAPH_FILE in expected) != (CNN_TENSORS_FILE in expected) or (CNN_GRAPH_FILE in expected and "export" not in manifest):
        raise WeightsError(f"{directory / MANIFEST_FILE}: an export lists {CNN_GRAPH_FILE}, {CNN_TENSORS_FILE} and an "
                           f"\"export\" section together: export again ({CONVERT_COMMAND.format(directory=directory)})")
    if "export" in manifest and manifest["export"].get("fingerprint") != manifest.get("encoder", {}).get("fingerprint"):
        raise WeightsError(f"{directory / CNN_GRAPH_FILE} was exported from encoder {manifest['export'].get('fingerprint')!r}, "
                           f"but the decoder reads {manifest.get('encoder', {}).get('fingerprint')!r}: export again "
                           f"({CONVERT_COMMAND.format(directory=directory)})")
    for name, sha256 in expected.items():
        path = directory / name
        if not path.is_file():
            raise WeightsError(f"{path} is missing")
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsError(
                f"{path} does not match its manifest (sha256 {actual[:16]}..., expected {str(sha256)[:16]}...): "
                "the file is corrupt or was changed; restore it or retrain"
            )
    named = model_id(expected[DECODER_FILE])
    if manifest.get("model_id") != named:  # every caption is labelled with it: it must name these weights
        raise WeightsError(
            f"{directory / MANIFEST_FILE}: model_id {manifest.get('model_id')!r} is not that of {DECODER_FILE} ({named})"
        )
    return manifest


def require_export(directory: str | Path, manifest: dict) -> dict:
    """The manifest's "export" section (model.export): the CNN's preprocessing, feature size and
    where it came from. NotExported, naming the command that converts the folder, if it has none."""
    if CNN_GRAPH_FILE not in manifest["files"]:
        raise NotExported(f"{directory} holds weights saved before the runtime served without torch (no {CNN_GRAPH_FILE}): "
                          f"convert them once with: {CONVERT_COMMAND.format(directory=directory)}")
    return manifest["export"]


def load_cnn_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """cnn.safetensors: probe.pixels [P, 3, size, size], probe.features [P, D] and, where the CNN
    has an ImageNet head on v, classifier.weight [C, D] and classifier.bias [C]."""
    from safetensors.numpy import load_file

    return load_file(Path(directory) / CNN_TENSORS_FILE)


def load_tag_map(directory: str | Path, manifest: dict) -> dict | None:
    """The tag map of a verified weights folder, None if it has none."""
    if TAGS_FILE not in manifest["files"]:
        return None
    try:
        return read_tag_map(Path(directory) / TAGS_FILE)
    except (ValueError, KeyError) as error:
        raise WeightsError(f"{Path(directory) / TAGS_FILE}: {error}") from error


def load_reranker(directory: str | Path, manifest: dict) -> ConsensusReranker | None:
    """The consensus reranker of a verified weights folder, None if it has none."""
    if RERANKER_FILE not in manifest["files"]:
        return None
    try:
        return ConsensusReranker.load(Path(directory) / RERANKER_FILE)
    except ValueError as error:
        raise WeightsError(str(error)) from error


if __name__ == "__main__":  # python -m runtime.weights DIR: the check the container build runs on its weights
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m runtime.weights WEIGHTS_DIR")
    try:
        checked = verify(sys.argv[1])
        require_export(sys.argv[1], checked)
    except WeightsError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{sys.argv[1]}: {checked['model_id']}, every file matches its manifest")
