"""Synthetic captioned scenes: coloured shapes on plain backgrounds, in the Flickr8k layout.

    python -m model.synthetic --out DIR --n 20000 --seed 0

writes DIR/Images/*.png, DIR/captions.txt (`image,caption`, 5 captions an image), the split lists
DIR/Flickr_8k.{train,dev,test}Images.txt and DIR/scenes.json (what each scene holds). The dev and
test scenes each hold a (colour, shape) pair that never occurs in training, so the scores measure
whether the model composes attributes, not whether it remembers images. Tests and the quick demo
train on these; they are no substitute for real photos.
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from runtime import cli
from runtime.vocab import tokenize

IMAGE_SIZE = 224
COLOURS = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 180), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS = {"white": (235, 235, 235), "black": (30, 30, 30), "gray": (128, 128, 128)}
SIZES = {"small": (15, 22), "large": (30, 38)}  # radius in pixels
MAX_TILT = 0.2  # radians


def _around(radii: list[float], start: float) -> list[tuple[float, float]]:
    """Points evenly spaced in angle at the given distances from the centre."""
    step = 2 * math.pi / len(radii)
    return [(r * math.cos(start + k * step), r * math.sin(start + k * step)) for k, r in enumerate(radii)]


# Outlines for a radius of 1 (circles are drawn as ellipses). Tilted by up to MAX_TILT, each still
# reaches at most 1.1 from the centre along either axis, which the margins in render_scene allow for.
ARM = 0.33  # half the width of a cross's bars
OUTLINES = {
    "square": _around([1.2] * 4, math.pi / 4),
    "triangle": _around([1.0] * 3, -math.pi / 2),
    "star": _around([1.0, 0.42] * 5, -math.pi / 2),
    "diamond": [(0, -1.1), (0.65, 0), (0, 1.1), (-0.65, 0)],
    "cross": [(-ARM, -1), (ARM, -1), (ARM, -ARM), (1, -ARM), (1, ARM), (ARM, ARM),
              (ARM, 1), (-ARM, 1), (-ARM, ARM), (-1, ARM), (-1, -ARM), (-ARM, -ARM)],
}
SHAPES = ("circle", *OUTLINES)
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt", "test": "Flickr_8k.testImages.txt"}
NOISE = 10  # background texture: per-pixel noise, so the images are not flat colour


def choose_held_out(rng: np.random.Generator, fraction: float) -> set[tuple[str, str]]:
    """(colour, shape) pairs never seen in training; every colour and shape still is."""
    pairs = list(product(COLOURS, SHAPES))
    count = max(1, round(fraction * len(pairs)))
    while True:
        held_out = {pairs[i] for i in rng.choice(len(pairs), count, replace=False)}
        kept = [p for p in pairs if p not in held_out]
        if {c for c, _ in kept} == set(COLOURS) and {s for _, s in kept} == set(SHAPES):
            return held_out


def split_of(index: int, n: int) -> str:
    """8 of every 10 scenes train, 1 val, 1 test; below 10 scenes, the last two are val and test."""
    if n >= 10:
        return {8: "val", 9: "test"}.get(index % 10, "train")
    return {n - 1: "test", n - 2: "val"}.get(index, "train")


def sample_scene(rng: np.random.Generator, split: str, held_out: set[tuple[str, str]], two_object_share: float) -> dict:
    """Training scenes hold two objects with probability two_object_share; dev and test scenes half
    the time, whatever it is, so that their scores compare across training sets."""
    allowed = sorted(set(product(COLOURS, SHAPES)) - held_out) if split == "train" else sorted(product(COLOURS, SHAPES))
    count = 1 + int(rng.random() < (two_object_share if split == "train" else 0.5))
    pairs = [allowed[i] for i in rng.choice(len(allowed), count)]
    if split != "train":  # one object of every dev/test scene has a pair training never showed
        novel = sorted(held_out)
        pairs[int(rng.integers(count))] = novel[int(rng.integers(len(novel)))]
    objects = [{"colour": colour, "shape": shape, "size": str(rng.choice(list(SIZES)))} for colour, shape in pairs]
    backgrounds = [b for b in BACKGROUNDS if b not in {colour for colour, _ in pairs}]  # gray always remains
    return {"background": str(rng.choice(backgrounds)), "objects": objects}


def render_scene(scene: dict, rng: np.random.Generator) -> Image.Image:
    background = np.array(BACKGROUNDS[scene["background"]], dtype=np.int16)
    noise = rng.integers(-NOISE, NOISE + 1, size=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.int16)
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    objects = scene["objects"]
    for k, obj in enumerate(objects):
        r = float(rng.uniform(*SIZES[obj["size"]]))
        if len(objects) == 1:
            cx, cy = rng.uniform(r + 8, IMAGE_SIZE - r - 8, size=2)
        else:  # left half, then right half, never overlapping
            left, right = (r + 4, IMAGE_SIZE / 2 - r - 4) if k == 0 else (IMAGE_SIZE / 2 + r + 4, IMAGE_SIZE - r - 4)
            cx, cy = rng.uniform(left, right), rng.uniform(r + 8, IMAGE_SIZE - r - 8)
        colour = COLOURS[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:  # a slight tilt, so no two squares are pixel-identical
            turn = float(rng.uniform(-MAX_TILT, MAX_TILT))
            cos, sin = math.cos(turn), math.sin(turn)
            draw.polygon([(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in OUTLINES[obj["shape"]]],
                         fill=colour)
    return image


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption_scene(scene: dict) -> list[str]:
    """Five captions, lightly varied in wording, each naming the objects left to right."""
    background = f"{scene['background']} background"
    full = [_a(f"{o['size']} {o['colour']} {o['shape']}") for o in scene["objects"]]
    bare = [_a(f"{o['colour']} {o['shape']}") for o in scene["objects"]]
    if len(full) == 1:
        return [
            f"{full[0]} on a {background}",
            f"{full[0]} against a {background}",
            f"there is {full[0]} on a {background}",
            f"{bare[0]} on a {background}",
            f"a picture of {full[0]} on a {background}",
        ]
    left, right = full
    return [
        f"{left} to the left of {right} on a {background}",
        f"{left} next to {right} on a {background}",
        f"there is {left} to the left of {right} against a {background}",
        f"{left} with {right} to its right on a {background}",
        f"{bare[0]} and {bare[1]} on a {background}",
    ]


def named_pairs(caption: str) -> Counter:
    """(colour, shape) pairs a caption names: a colour word, optional size words, then a shape word."""
    words, pairs = tokenize(caption), Counter()
    for i, word in enumerate(words):
        if word in COLOURS:
            j = i + 1
            while j < len(words) and words[j] in SIZES:
                j += 1
            if j < len(words) and words[j] in SHAPES:
                pairs[(word, words[j])] += 1
    return pairs


def objects_named_correctly(caption: str, scene: dict) -> bool:
    """Every object's colour and shape named, and nothing else named, in any order."""
    return named_pairs(caption) == Counter((o["colour"], o["shape"]) for o in scene["objects"])


def load_scenes(dataset_dir: str | Path) -> dict[str, dict]:
    return json.loads((Path(dataset_dir) / "scenes.json").read_text())


def generate(out: Path, n: int, seed: int, holdout_fraction: float, two_object_share: float) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    held_out = choose_held_out(rng, holdout_fraction)
    (out / "Images").mkdir(parents=True, exist_ok=True)
    scenes, splits = {}, {split: [] for split in SPLIT_FILES}
    with open(out / "captions.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for index in tqdm(range(n), desc="scenes", unit="scene"):
            name, split = f"scene_{index:06d}.png", split_of(index, n)
            scene = sample_scene(rng, split, held_out, two_object_share)
            render_scene(scene, rng).save(out / "Images" / name, compress_level=1)
            writer.writerows([name, caption] for caption in caption_scene(scene))
            scenes[name] = scene
            splits[split].append(name)
    for split, file_name in SPLIT_FILES.items():
        (out / file_name).write_text("".join(f"{name}\n" for name in splits[split]))
    (out / "scenes.json").write_text(json.dumps(scenes))
    (out / "held_out_pairs.json").write_text(json.dumps(sorted(held_out)) + "\n")
    return {split: len(names) for split, names in splits.items()}


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("model.synthetic", __doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, required=True, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same scenes")
    parser.add_argument("--holdout-fraction", type=float, default=0.15, help="share of (colour, shape) pairs kept out of training")
    parser.add_argument("--two-object-share", type=float, default=0.5,
                        help="share of training scenes with two objects (dev and test: always half)")
    args = parser.parse_args(argv)
    if args.n < 3:
        parser.error("--n must be at least 3 (one scene each for train, val and test)")
    if not 0 < args.holdout_fraction < 0.5:
        parser.error("--holdout-fraction must be between 0 and 0.5")
    if not 0 <= args.two_object_share <= 1:
        parser.error("--two-object-share must be between 0 and 1")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    counts = generate(args.out, args.n, args.seed, args.holdout_fraction, args.two_object_share)
    print(f"wrote {args.n} scenes to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
