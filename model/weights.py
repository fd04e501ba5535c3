"""The trained-decoder folder: safetensors weights, vocabulary, config and a manifest.

manifest.json records the sha256 of every other file; loading checks each one and refuses a
missing or changed file. Nothing here unpickles: safetensors and JSON only.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from model.confidence import Calibration
from model.consensus import RERANKER_FILE, ConsensusReranker
from model.decoder import Decoder, DecoderConfig
from model.encoder import sha256_file
from model.files import atomic_write
from model.tags import TAGS_FILE, read_tag_map
from model.vocab import Vocab

DECODER_FILE = "decoder.safetensors"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"


class WeightsError(RuntimeError):
    """The weights folder is missing a file, or a file does not match its manifest."""


def save_weights(directory: str | Path, decoder: Decoder, vocab: Vocab, manifest: dict) -> dict:
    """Write the decoder folder; `manifest` carries the encoder, training and score fields.
    Returns the full manifest, with the sha256 of every file and the model id."""
    directory = Path(directory)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in decoder.state_dict().items()}
    atomic_write(directory / DECODER_FILE, lambda tmp: save_file(state, tmp))
    atomic_write(directory / VOCAB_FILE, vocab.save)
    atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(decoder.config.to_dict(), indent=2) + "\n"))
    # The new manifest lists neither: fit the reranker again (model.fit_reranker), map the tags to the new vocabulary (model.tag_map)
    for stale in (RERANKER_FILE, TAGS_FILE):
        (directory / stale).unlink(missing_ok=True)
    files = {name: sha256_file(directory / name) for name in (DECODER_FILE, VOCAB_FILE, CONFIG_FILE)}
    full = {"model_id": f"captioner-{files[DECODER_FILE][:12]}", **manifest, "files": files}
    write_manifest(directory, full)
    return full


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
    required = {DECODER_FILE, VOCAB_FILE, CONFIG_FILE}
    if not isinstance(expected, dict) or not required <= set(expected) <= required | {RERANKER_FILE, TAGS_FILE}:
        raise WeightsError(f"{directory / MANIFEST_FILE} does not list the sha256 of {DECODER_FILE}, {VOCAB_FILE}, {CONFIG_FILE} "
                           f"(and of {RERANKER_FILE} and {TAGS_FILE}, if there are) and nothing else")
    if manifest.get("decoding", {}).get("consensus_weight") and RERANKER_FILE not in expected:
        raise WeightsError(f"{directory / MANIFEST_FILE}: its decoding reranks by consensus, but it lists no {RERANKER_FILE} "
                           "(fit one with python -m model.fit_reranker)")
    calibration = Calibration.from_manifest(manifest)
    if calibration and calibration.uses_agreement and RERANKER_FILE not in expected:
        raise WeightsError(f"{directory / MANIFEST_FILE}: the caption confidence was calibrated with a consensus reranker, "
                           f"but it lists no {RERANKER_FILE}")
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
    model_id = f"captioner-{expected[DECODER_FILE][:12]}"
    if manifest.get("model_id") != model_id:  # every caption is labelled with it: it must name these weights
        raise WeightsError(
            f"{directory / MANIFEST_FILE}: model_id {manifest.get('model_id')!r} is not that of {DECODER_FILE} ({model_id})"
        )
    return manifest


def load_weights(directory: str | Path) -> tuple[Decoder, Vocab, dict]:
    """Verify, then load the decoder (in eval mode), the vocabulary and the manifest."""
    directory = Path(directory)
    manifest = verify(directory)
    config = DecoderConfig(**json.loads((directory / CONFIG_FILE).read_text()))
    decoder = Decoder(config)
    decoder.load_state_dict(load_file(directory / DECODER_FILE))
    return decoder.eval(), Vocab.load(directory / VOCAB_FILE), manifest


def add_reranker(directory: str | Path, reranker: ConsensusReranker, details: dict) -> dict:
    """Save the reranker into a verified weights folder and list it in the manifest, with `details`
    ("consensus"); returns the manifest. The serving decoding is left as it is."""
    manifest = verify(directory)
    path = Path(directory) / RERANKER_FILE
    reranker.save(path)
    manifest["files"][RERANKER_FILE] = sha256_file(path)
    manifest["consensus"] = details
    write_manifest(directory, manifest)
    return manifest


def add_tag_map(directory: str | Path, tag_map: dict, details: dict) -> dict:
    """Save the tag map (model.tag_map) into a verified weights folder and list it in the manifest,
    with `details` ("tags": how it was made); returns the manifest. A calibration already there is kept."""
    manifest = verify(directory)
    path = Path(directory) / TAGS_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(tag_map, indent=1) + "\n"))
    manifest["files"][TAGS_FILE] = sha256_file(path)
    manifest["tags"] = {**details, **{key: value for key, value in manifest.get("tags", {}).items() if key not in details}}
    write_manifest(directory, manifest)
    return manifest


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


if __name__ == "__main__":  # python -m model.weights DIR: the check the container build runs on its weights
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m model.weights WEIGHTS_DIR")
    try:
        checked = verify(sys.argv[1])
    except WeightsError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{sys.argv[1]}: {checked['model_id']}, every file matches its manifest")
