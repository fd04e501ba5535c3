import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import load_dataset
from model.synthetic import COLOURS, caption_scene, load_scenes, objects_named_correctly, render_scene

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "set"
    result = subprocess.run([sys.executable, "-m", "model.synthetic", "--out", str(out), "--n", "60", "--seed", "3"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def test_layout_is_flickr8k_kaggle(scenes_dir):
    with open(scenes_dir / "captions.txt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "caption"]
    per_image = {}
    for name, caption in rows[1:]:
        per_image.setdefault(name, []).append(caption)
    assert len(per_image) == 60 and all(len(c) == 5 for c in per_image.values())
    assert all((scenes_dir / "Images" / name).is_file() for name in per_image)


def test_splits_are_disjoint_and_held_out_pairs_never_train(scenes_dir):
    dataset = load_dataset(scenes_dir)
    names = {split: {i.image_path.name for i in dataset.split(split)} for split in ("train", "val", "test")}
    assert sum(map(len, names.values())) == 60 and all(names.values())
    assert not (names["train"] & names["test"]) and not (names["train"] & names["val"])
    held_out = {tuple(p) for p in json.loads((scenes_dir / "held_out_pairs.json").read_text())}
    scenes = load_scenes(scenes_dir)
    for name in names["train"]:
        assert not {(o["colour"], o["shape"]) for o in scenes[name]["objects"]} & held_out
    for name in names["test"] | names["val"]:
        assert {(o["colour"], o["shape"]) for o in scenes[name]["objects"]} & held_out


def test_same_seed_same_data(scenes_dir, tmp_path):
    subprocess.run([sys.executable, "-m", "model.synthetic", "--out", str(tmp_path), "--n", "60", "--seed", "3"],
                   cwd=ROOT, check=True, capture_output=True)
    assert (tmp_path / "captions.txt").read_text() == (scenes_dir / "captions.txt").read_text()
    assert (tmp_path / "Images/scene_000007.png").read_bytes() == (scenes_dir / "Images/scene_000007.png").read_bytes()


def test_generated_captions_name_their_objects(scenes_dir):
    for name, scene in load_scenes(scenes_dir).items():
        assert all(objects_named_correctly(caption, scene) for caption in caption_scene(scene))


def test_wrong_or_missing_objects_are_caught():
    scene = {"background": "gray", "objects": [{"colour": "red", "shape": "circle", "size": "small"},
                                               {"colour": "blue", "shape": "star", "size": "large"}]}
    assert objects_named_correctly("a large blue star to the right of a small red circle on a gray background", scene)
    assert not objects_named_correctly("a small green circle next to a large blue star on a gray background", scene)
    assert not objects_named_correctly("a small red square next to a large blue star on a gray background", scene)
    assert not objects_named_correctly("a small red circle on a gray background", scene)
    assert not objects_named_correctly("a red circle and a blue star and a red star", scene)


def test_pixels_show_the_named_colour():
    scene = {"background": "white", "objects": [{"colour": "orange", "shape": "square", "size": "large"}]}
    pixels = np.asarray(render_scene(scene, np.random.default_rng(0))).reshape(-1, 3).astype(int)
    distance_to_orange = np.abs(pixels - COLOURS["orange"]).sum(1)
    assert (distance_to_orange < 10).sum() > 30 * 30  # a large square covers well over 900 pixels


@pytest.mark.parametrize("args, message", [(["--n", "0"], "at least 3"), (["--n", "5", "--holdout-fraction", "0.9"], "between")])
def test_bad_arguments_are_refused_without_traceback(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "model.synthetic", "--out", str(tmp_path / "x"), *args],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
