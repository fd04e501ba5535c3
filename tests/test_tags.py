"""Tags: the CNN's ImageNet classes as caption words (model.tag_map builds the map, runtime.tags reads it)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.decoder import Decoder, DecoderConfig
from model.encoder import build_encoder
from model.export import export
from model.weights import add_tag_map, save_weights
from runtime.captioner import Captioner
from runtime.tags import TAGS_FILE, TagCalibration
from runtime.vocab import Vocab
from runtime.weights import WeightsError, write_manifest
from tests.conftest import ROOT, WEIGHTS

WORDNET = Path("/usr/share/wordnet")
CLASSES = ROOT.parent / "shared" / "data" / "imagenet" / "imagenet_classes.tsv"


def shipped_map() -> dict:
    return json.loads((WEIGHTS / TAGS_FILE).read_text())


def test_the_shipped_map_names_classes_as_captions_would():
    words = {entry["name"]: entry["word"] for entry in shipped_map()["classes"]}
    assert len(words) == 1000
    assert words["tabby"] == words["Egyptian cat"] == "cat"
    assert words["espresso"] == "coffee"
    assert words["golden retriever"] == words["Chihuahua"] == "dog"  # the word people use, not "retriever" or "toy"
    assert words["kite"] == "bird"  # ImageNet's kite is the bird: the word "kite" says the toy
    assert words["abacus"] is None and words["European fire salamander"] is None  # nothing sensible in the vocabulary


def test_each_word_is_satisfied_by_its_plural_and_the_words_under_it():
    tag_map = shipped_map()
    assert {"dog", "dogs", "puppy", "terrier"} <= set(tag_map["words"]["dog"])
    assert tag_map["words"]["cat"][0] == "cat" and "cats" in tag_map["words"]["cat"]
    vocab = set(json.loads((WEIGHTS / "vocab.json").read_text())["words"])
    assert all(set(forms) <= vocab for forms in tag_map["words"].values())
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in tag_map["licence"]


@pytest.mark.skipif(not (WORDNET / "data.noun").is_file() or not CLASSES.is_file(),
                    reason="needs WordNet 3.0 (apt-get install wordnet-base) and ../shared/data/imagenet")
def test_the_map_script_rebuilds_the_shipped_map_byte_for_byte(tmp_path):
    from model.tag_map import main

    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS, copy)
    (copy / TAGS_FILE).unlink()
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"][TAGS_FILE]
    write_manifest(copy, manifest)
    main(["--classes", str(CLASSES), "--weights", str(copy)])
    assert (copy / TAGS_FILE).read_bytes() == (WEIGHTS / TAGS_FILE).read_bytes()
    assert json.loads((copy / "manifest.json").read_text()) == json.loads((WEIGHTS / "manifest.json").read_text())


def test_calibration_is_monotone_and_the_identity_by_default():
    p = np.array([0.01, 0.2, 0.5, 0.9], np.float32)
    assert np.allclose(TagCalibration()(p), p)
    calibrated = TagCalibration(0.8, -0.3)(p)
    assert (np.diff(calibrated) > 0).all() and not np.allclose(calibrated, p)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """Real (untrained) weights whose vocabulary lacks the map's words, exported as the runtime loads them."""
    torch.manual_seed(0)
    encoder = build_encoder(runtime="eager")  # for its name and size: export builds it again
    vocab = Vocab.build(["a grey square on a grey background"], min_count=1)
    directory = tmp_path_factory.mktemp("weights")
    save_weights(directory, Decoder(DecoderConfig(len(vocab), encoder.feature_dim, 8, 16, 0.0)), vocab,
                 {"encoder": {"name": encoder.name, "pooling": encoder.pooling, "fingerprint": encoder.fingerprint},
                  "decoding": {"guided": True}})
    export(directory)
    return directory


def test_weights_without_a_map_caption_plainly_and_say_why(small_weights, caplog):
    captioner = Captioner.load(small_weights)
    assert captioner.tagger is None and "no tag map" in captioner.no_tags_reason
    assert [record.message for record in caplog.records if record.message.startswith("tags:")] == [
        f"tags: none: {captioner.no_tags_reason}"]
    image = Image.open(ROOT / "docs" / "examples" / "cat.jpg")
    features = captioner.encode([image])
    assert captioner.tags(features) == [[]]
    assert captioner.describe(features) == captioner.describe(features, captioner.decoding.but(guided=False))


def test_a_map_whose_words_the_vocabulary_lacks_is_refused_with_the_fix(small_weights, tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(small_weights, copy)
    add_tag_map(copy, json.loads((WEIGHTS / TAGS_FILE).read_text()), {"map": "the shipped map, for another vocabulary"})
    with pytest.raises(WeightsError, match=r"tag words missing from the vocabulary: .*python -m model.tag_map"):
        Captioner.load(copy)
