"""Writing the weights folder: the decoder's safetensors, vocabulary, config and a manifest, and
what later steps add to it (the reranker, the tag map). runtime.weights reads and checks it."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from model import consensus
from model.decoder import Decoder, DecoderConfig
from runtime.consensus import RERANKER_FILE, ConsensusReranker
from runtime.decoder import CONFIG_FILE, DECODER_FILE, read_config
from runtime.files import atomic_write, sha256_file
from runtime.tags import TAGS_FILE
from runtime.vocab import Vocab
from runtime.weights import OPTIONAL_FILES, REQUIRED_FILES, VOCAB_FILE, model_id, verify, write_manifest


def save_weights(directory: str | Path, decoder: Decoder, vocab: Vocab, manifest: dict) -> dict:
    """Write the decoder folder; `manifest` carries the encoder, training and score fields.
    Returns the full manifest, with the sha256 of every file and the model id."""
    directory = Path(directory)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in decoder.state_dict().items()}
    atomic_write(directory / DECODER_FILE, lambda tmp: save_file(state, tmp))
    atomic_write(directory / VOCAB_FILE, vocab.save)
    atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(decoder.config.to_dict(), indent=2) + "\n"))
    # The new manifest lists none: fit the reranker again (model.fit_reranker), map the tags to the new
    # vocabulary (model.tag_map), export the CNN (model.export)
    for stale in OPTIONAL_FILES:
        (directory / stale).unlink(missing_ok=True)
    files = {name: sha256_file(directory / name) for name in REQUIRED_FILES}
    full = {"model_id": model_id(files[DECODER_FILE]), **manifest, "files": files}
    write_manifest(directory, full)
    return full


def load_weights(directory: str | Path) -> tuple[Decoder, Vocab, dict]:
    """Verify, then load the decoder (in eval mode), the vocabulary and the manifest."""
    directory = Path(directory)
    manifest = verify(directory)
    config = DecoderConfig(**read_config(directory))
    decoder = Decoder(config)
    decoder.load_state_dict(load_file(directory / DECODER_FILE))
    return decoder.eval(), Vocab.load(directory / VOCAB_FILE), manifest


def add_reranker(directory: str | Path, reranker: ConsensusReranker, details: dict) -> dict:
    """Save the reranker into a verified weights folder and list it in the manifest, with `details`
    ("consensus"); returns the manifest. The serving decoding is left as it is."""
    manifest = verify(directory)
    path = Path(directory) / RERANKER_FILE
    consensus.save(reranker, path)
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
