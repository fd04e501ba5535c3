"""The synthetic scene generator: Flickr8k layout, held-out colour-shape pairs, captions that match the pixels."""
import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import load_dataset
from model.evaluate import synthetic_scores
from model.synthetic import (
    BACKGROUNDS, COLOURS, NOISE, SHAPES, SPLIT_FILES, caption_scene, choose_held_out, load_scenes, main,
    objects_named_correctly, render_scene,
)

ROOT = Path(__file__).resolve().parent.parent
N = 30
SEED = 1


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "set"
    result = subprocess.run([sys.executable, "-m", "model.synthetic", "--out", str(out), "--n", str(N), "--seed", str(SEED)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("train 24, val 3, test 3")
    return out


def read_captions(dataset_dir: Path) -> dict[str, list[str]]:
    with open(dataset_dir / "captions.txt", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "caption"]
    per_image = {}
    for name, caption in rows[1:]:
        per_image.setdefault(name, []).append(caption)
    return per_image


def read_splits(dataset_dir: Path) -> dict[str, list[str]]:
    return {split: (dataset_dir / file_name).read_text().split() for split, file_name in SPLIT_FILES.items()}


def pairs_of(scene: dict) -> set[tuple[str, str]]:
    return {(o["colour"], o["shape"]) for o in scene["objects"]}


def test_layout_is_flickr8k_kaggle(scenes_dir):
    captions = read_captions(scenes_dir)
    assert len(captions) == N and all(len(c) == 5 for c in captions.values())
    assert sorted(p.name for p in (scenes_dir / "Images").iterdir()) == sorted(captions)
    with Image.open(scenes_dir / "Images" / "scene_000000.png") as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (224, 224)
    assert set(load_scenes(scenes_dir)) == set(captions)


def test_splits_are_disjoint_cover_everything_and_data_py_reads_them(scenes_dir):
    splits = read_splits(scenes_dir)
    assert {k: len(v) for k, v in splits.items()} == {"train": 24, "val": 3, "test": 3}
    assert sorted(sum(splits.values(), [])) == sorted(read_captions(scenes_dir))  # each image in exactly one split
    dataset = load_dataset(scenes_dir)
    assert {split: sorted(i.image_path.name for i in dataset.split(split)) for split in splits} == \
        {split: sorted(names) for split, names in splits.items()}


def test_held_out_pairs_never_train_and_every_val_and_test_scene_has_one(scenes_dir):
    held_out = {tuple(p) for p in json.loads((scenes_dir / "held_out_pairs.json").read_text())}
    scenes, splits = load_scenes(scenes_dir), read_splits(scenes_dir)
    assert all(not pairs_of(scenes[name]) & held_out for name in splits["train"])
    assert all(pairs_of(scenes[name]) & held_out for name in splits["val"] + splits["test"])


@pytest.mark.parametrize("seed", range(5))
def test_held_out_pairs_leave_every_colour_and_shape_in_training(seed):
    held_out = choose_held_out(np.random.default_rng(seed), 0.15)
    assert len(held_out) == round(0.15 * len(COLOURS) * len(SHAPES))
    kept = {(c, s) for c in COLOURS for s in SHAPES} - held_out
    assert {c for c, _ in kept} == set(COLOURS) and {s for _, s in kept} == set(SHAPES)


def test_scenes_follow_the_rules(scenes_dir):
    for scene in load_scenes(scenes_dir).values():
        assert scene["background"] in BACKGROUNDS and 1 <= len(scene["objects"]) <= 2
        assert all(o["colour"] in COLOURS and o["shape"] in SHAPES and o["size"] in ("small", "large")
                   for o in scene["objects"])
        assert scene["background"] not in {o["colour"] for o in scene["objects"]}


def test_same_seed_same_data_other_seed_other_data(scenes_dir, tmp_path):
    main(["--out", str(tmp_path / "same"), "--n", str(N), "--seed", str(SEED)])
    main(["--out", str(tmp_path / "other"), "--n", str(N), "--seed", str(SEED + 1)])
    files = ["captions.txt", "scenes.json", *SPLIT_FILES.values(), *(f"Images/scene_{i:06d}.png" for i in range(N))]
    assert all((tmp_path / "same" / f).read_bytes() == (scenes_dir / f).read_bytes() for f in files)
    assert (tmp_path / "other" / "captions.txt").read_text() != (scenes_dir / "captions.txt").read_text()


def test_written_captions_name_their_objects_and_background(scenes_dir):
    scenes = load_scenes(scenes_dir)
    for name, captions in read_captions(scenes_dir).items():
        assert captions == caption_scene(scenes[name])
        assert all(objects_named_correctly(c, scenes[name]) for c in captions)
        assert all(f"{scenes[name]['background']} background" in c for c in captions)


def test_two_object_captions_name_the_left_object_first():
    """Every wording names the left object first: a decoder that sees v but no attention map cannot tell,
    at the first colour word, which object a sentence will start with (docs/synthetic.md)."""
    scene = {"background": "gray", "objects": [{"colour": "red", "shape": "circle", "size": "small"},
                                               {"colour": "orange", "shape": "star", "size": "large"}]}
    assert caption_scene(scene) == [
        "a small red circle to the left of a large orange star on a gray background",
        "a small red circle next to a large orange star on a gray background",
        "there is a small red circle to the left of a large orange star against a gray background",
        "a small red circle with a large orange star to its right on a gray background",
        "a red circle and an orange star on a gray background",
    ]


def test_wrong_or_missing_objects_are_caught():
    scene = {"background": "gray", "objects": [{"colour": "red", "shape": "circle", "size": "small"},
                                               {"colour": "blue", "shape": "star", "size": "large"}]}
    assert objects_named_correctly("a large blue star to the right of a small red circle on a gray background", scene)
    assert not objects_named_correctly("a small green circle next to a large blue star on a gray background", scene)
    assert not objects_named_correctly("a small red square next to a large blue star on a gray background", scene)
    assert not objects_named_correctly("a small red circle on a gray background", scene)
    assert not objects_named_correctly("a red circle and a blue star and a red star", scene)
    assert not objects_named_correctly("a red small and a blue star", scene)  # a colour without its shape


def object_pixels(image: Image.Image, background: str) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (y, x, rgb) the background's noisy texture cannot explain."""
    pixels = np.asarray(image).astype(int)
    far = np.abs(pixels - BACKGROUNDS[background]).max(-1) > NOISE
    return np.argwhere(far), pixels[far]


@pytest.mark.parametrize("colour", COLOURS)
def test_pixels_show_the_named_colour(colour):
    background = "gray" if colour in ("white", "black") else "white"
    scene = {"background": background, "objects": [{"colour": colour, "shape": "triangle", "size": "small"}]}
    _, pixels = object_pixels(render_scene(scene, np.random.default_rng(0)), background)
    [(most_common, count)] = Counter(map(tuple, pixels)).most_common(1)
    assert np.abs(np.array(most_common) - COLOURS[colour]).max() <= 5 and count > 200  # a small triangle: ~300 px


def test_objects_are_drawn_left_to_right_in_their_halves():
    scene = {"background": "black", "objects": [{"colour": "yellow", "shape": "cross", "size": "large"},
                                                {"colour": "blue", "shape": "diamond", "size": "large"}]}
    for seed in range(5):
        where, pixels = object_pixels(render_scene(scene, np.random.default_rng(seed)), "black")
        xs = {name: where[(pixels == COLOURS[name]).all(-1), 1] for name in ("yellow", "blue")}
        assert len(xs["yellow"]) > 500 and len(xs["blue"]) > 500
        assert xs["yellow"].max() < 112 <= xs["blue"].min()


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "at least 3"),
    (["--n", "5", "--holdout-fraction", "0.9"], "between"),
    (["--n", "5", "--out", "a_file"], "not a folder"),
    (["--n", "5", "--two-object-share", "1.5"], "between 0 and 1"),
])
def test_bad_arguments_are_refused_with_a_usage_error(tmp_path, capsys, args, message):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit:
        main(["--out", str(tmp_path / "x"), *[str(tmp_path / a) if a == "a_file" else a for a in args]])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_synthetic_scores_by_object_count_and_by_pair(scenes_dir):
    scenes = load_scenes(scenes_dir)
    held_out = {tuple(pair) for pair in json.loads((scenes_dir / "held_out_pairs.json").read_text())}
    right = {name: caption_scene(scene)[0] for name, scene in scenes.items()}
    assert synthetic_scores(scenes_dir, right) == {
        "objects_correct": 1.0, "objects_correct_1_object": 1.0, "objects_correct_2_objects": 1.0,
        "held_out_pairs_named": 1.0, "seen_pairs_named": 1.0,
    }
    # every scene holding a held-out pair gets a caption naming nothing
    wrong = {name: "a picture" if any((o["colour"], o["shape"]) in held_out for o in scene["objects"]) else caption
             for (name, scene), caption in zip(scenes.items(), right.values())}
    scores = synthetic_scores(scenes_dir, wrong)
    novel_scenes = sum(caption == "a picture" for caption in wrong.values())
    assert 0 < novel_scenes < len(scenes)
    assert scores["objects_correct"] == pytest.approx(1 - novel_scenes / len(scenes))
    assert scores["held_out_pairs_named"] == 0.0
    assert 0 < scores["seen_pairs_named"] < 1  # seen objects that share a scene with a held-out one


def test_probe_script_reads_out_every_pooling(scenes_dir, tmp_path):
    result = subprocess.run([sys.executable, "scripts/probe_v.py", "--data", str(scenes_dir),
                             "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "two-object scenes: both objects named right" in result.stdout
    for pooling, dim in (("head-mean", 1280), ("grids", 1408), ("head-mean+grids", 2368)):
        assert re.search(rf"{re.escape(pooling)} \({dim}-d\)\s+\d+\.\d%", result.stdout)
    missing = subprocess.run([sys.executable, "scripts/probe_v.py", "--data", str(tmp_path)],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "no dataset found" in missing.stderr


def test_two_object_share_shapes_training_only(tmp_path):
    """--two-object-share 1: every training scene holds two objects; dev and test still mix one and two."""
    main(["--out", str(tmp_path), "--n", "200", "--seed", "0", "--two-object-share", "1"])
    scenes, splits = load_scenes(tmp_path), read_splits(tmp_path)
    assert {len(scenes[name]["objects"]) for name in splits["train"]} == {2}
    assert {len(scenes[name]["objects"]) for name in splits["val"] + splits["test"]} == {1, 2}
