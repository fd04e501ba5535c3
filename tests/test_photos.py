"""Real photos end to end: train, fine-tune self-critically and evaluate on a slice of the shared Flickr8k.

The slice (a few dozen photos linked into a temporary folder, with their captions and split lists in
the original layout) also holds a photo listed but missing and one truncated JPEG: both are skipped
and named, never a crash and never a silent drop. Like the shared folder, it has no test split.
"""
import json
import re
import shutil
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.captioner import Captioner

ROOT = Path(__file__).resolve().parent.parent
FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"
TRAIN, VAL = 40, 12
pytestmark = pytest.mark.skipif(not (FLICKR8K / "Flickr8k.token.txt").is_file(),
                                reason=f"the shared Flickr8k photos are not at {FLICKR8K}")


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flickr8k-slice")
    images = root / "Images"
    images.mkdir()
    train = (FLICKR8K / "Flickr_8k.trainImages.txt").read_text().split()[:TRAIN]
    val = (FLICKR8K / "Flickr_8k.devImages.txt").read_text().split()[:VAL]
    for name in train + val:
        (images / name).symlink_to(FLICKR8K / "Images" / name)
    truncated, missing = "truncated.jpg", "missing.jpg"
    (images / truncated).write_bytes((FLICKR8K / "Images" / train[0]).read_bytes()[:3000])
    kept = set(train + val)
    lines = [line for line in (FLICKR8K / "Flickr8k.token.txt").read_text().splitlines() if line.split("#")[0] in kept]
    lines += [f"{name}#{n}\ta photo that cannot be read" for name in (truncated, missing) for n in range(5)]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(train + [truncated, missing]) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("\n".join(val) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("run") / "xe"
    result = run("-m", "model.train", "--data", str(photos), "--out", str(out), "--cache-dir", str(photos.parent / "cache"),
                 "--views", "plain,flip", "--epochs", "3", "--hidden-dim", "64", "--embed-dim", "32", "--min-count", "2",
                 "--batch-size", "32", "--lr", "5e-3", "--workers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_training_skips_and_names_unreadable_photos(trained):
    _, result = trained
    assert "skipped 2 unreadable images" in result.stderr
    assert "truncated.jpg" in result.stderr and "missing.jpg" in result.stderr
    assert "Traceback" not in result.stderr


def test_training_finishes_without_a_test_split_and_scores_val(trained, photos):
    out, result = trained
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["data"]["name"] == "Flickr8k"
    assert manifest["data"]["splits"] == {"train": {"images": TRAIN + 2, "captions": 5 * (TRAIN + 2)},
                                          "val": {"images": VAL, "captions": 5 * VAL}}
    val = manifest["scores"]["val"]
    assert val["n_images"] == VAL and val["beam_size"] == manifest["decoding"]["beam_size"]
    assert set(val) >= {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    assert "test" not in manifest["scores"]
    assert "no test scores" in result.stdout and "Flickr_8k.testImages.txt does not exist" in result.stdout
    assert "Flickr8k" in manifest["note"] and "Weak at" in manifest["note"]
    assert manifest["encoder"]["pooling"] == manifest["training"]["settings"]["pooling"]
    assert manifest["training"]["settings"]["views"] == ["plain", "flip"]


def test_evaluate_names_the_missing_test_split(trained, photos):
    out, _ = trained
    result = run("-m", "model.evaluate", "--weights", str(out / "best"), "--data", str(photos), "--split", "test")
    assert result.returncode == 2
    assert "split 'test'" in result.stderr and "Flickr_8k.testImages.txt does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_scores_val_and_sets_the_serving_decoding(trained, photos, tmp_path):
    out, _ = trained
    weights = tmp_path / "weights"
    shutil.copytree(out / "best", weights)
    result = run("-m", "model.evaluate", "--weights", str(weights), "--data", str(photos), "--split", "val",
                 "--beam-size", "2", "--block-ngram", "2", "--set-defaults")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "beam_size 2" in result.stdout and "CIDEr" in result.stdout
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["decoding"] == {"beam_size": 2, "length_penalty": 0.0, "block_ngram": 2, "max_length": 20,
                                    "consensus_weight": 0.0, "guided": False, "tag_threshold": 0.5, "forced_tags": 1,
                                    "state_beam_size": 0}
    assert manifest["scores"]["val"]["block_ngram"] == 2
    again = run("-m", "model.evaluate", "--weights", str(weights), "--data", str(photos), "--split", "val")  # no flags: the weights' decoding
    assert "beam_size 2, length_penalty 0.0, block_ngram 2" in again.stdout
    assert f"{manifest['scores']['val']['CIDEr']:.4f}" in again.stdout


def test_a_reranker_fitted_on_the_training_photos_is_scored_and_served(trained, photos, tmp_path):
    out, _ = trained
    weights = tmp_path / "weights"
    shutil.copytree(out / "best", weights)
    cache = str(photos.parent / "cache")
    refused = run("-m", "model.evaluate", "--weights", str(weights), "--data", str(photos), "--consensus-weight", "100")
    assert refused.returncode == 2 and "has no consensus reranker: fit one with python -m model.fit_reranker" in refused.stderr
    cached = sorted((photos.parent / "cache").iterdir())
    fitted = run("-m", "model.fit_reranker", "--weights", str(weights), "--data", str(photos), "--cache-dir", cache)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert f"fitted on {TRAIN} photos" in fitted.stdout and "skipped 2 unreadable images" in fitted.stderr
    result = run("-m", "model.evaluate", "--weights", str(weights), "--data", str(photos),
                 "--beam-size", "4", "--consensus-weight", "100", "--set-defaults")
    assert result.returncode == 0, result.stderr[-3000:]
    # fit_reranker read the features training cached (no CNN pass); evaluate runs the served CNN and caches nothing
    assert sorted((photos.parent / "cache").iterdir()) == cached
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["decoding"]["consensus_weight"] == 100.0 and manifest["consensus"]["fitted_on"] == f"{TRAIN} Flickr8k training photos"
    captioner = Captioner.load(weights, "cpu")
    assert captioner.reranker is not None and len(captioner.reranker.grams) > 10


def test_self_critical_fine_tuning_runs_on_photos(trained, photos):
    out, _ = trained
    scst = out.parent / "scst"
    result = run("-m", "model.train", "--data", str(photos), "--out", str(scst), "--cache-dir", str(photos.parent / "cache"),
                 "--init", str(out / "best"), "--scst", "--scst-samples", "3", "--epochs", "2", "--batch-size", "16",
                 "--lr", "1e-4", "--views", "plain", "--workers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (scst / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(0 <= record["train_reward"] for record in log)
    manifest = json.loads((scst / "best" / "manifest.json").read_text())
    assert manifest["training"]["settings"]["scst"] and manifest["training"]["settings"]["init"] == str(out / "best")
    assert json.loads((scst / "vocab.json").read_text()) == json.loads((out / "best" / "vocab.json").read_text())


def test_compare_fit_scores_squeeze_crop_and_pad(trained, photos):
    out, _ = trained
    result = run("scripts/compare_fit.py", "--weights", str(out / "best"), "--data", str(photos))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("as stored", "4:3", "3:4"))]
    assert [row[-4] for row in rows] == ["squeeze"] + ["squeeze", "crop", "pad"] * 2
    assert all(0 <= float(row[-1]) for row in rows)  # CIDEr


def test_compare_tag_views_refits_the_scaling_and_scores_each_view(photos):
    result = run("scripts/compare_tag_views.py", "--data", str(photos))  # the shipped weights: they have a tag map
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 2 unreadable images" in result.stderr  # the slice's truncated and missing training photos
    views = re.findall(rf"tags from the (.+) view; Platt scaling refitted on {TRAIN} training photos: slope (\S+), intercept", result.stdout)
    assert [view for view, _ in views] == ["decoder's (whole photo, squeezed)", "classifier's (centre 87.5%)"]
    assert all(float(slope) > 0 for _, slope in views)  # more probable classes, more often said
    assert len(re.findall(r"^  Flickr8k: CIDEr \d\.\d{4}", result.stdout, re.M)) == 2
    examples = sorted(path.stem for path in (ROOT / "docs" / "examples").glob("*.jpg"))
    listed = re.findall(r"^ +(\w+): .+: \w.+$", result.stdout, re.M)
    assert listed == examples * 2  # each example photo with its tags and guided caption, per view
    assert re.search(r"^cat: cat 0\.\d\d: .*\bcat\b", "\n".join(line.strip() for line in result.stdout.splitlines()), re.M)


def test_probe_reads_caption_words_out_of_every_pooling(photos):
    result = run("scripts/probe_v.py", "--data", str(photos), "--cache-dir", str(photos.parent / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{TRAIN} training and {VAL} validation photos: mean average precision of" in result.stdout
    assert "skipped 2 unreadable images" in result.stderr
    for pooling, dim in (("head-mean", 1280), ("grids", 1408), ("head-mean+grids", 2368)):
        assert re.search(rf"{re.escape(pooling)} \({dim}-d\)\s+\d+\.\d%", result.stdout)


def test_examples_captions_every_example_photo_and_the_first_val_photos(trained, photos):
    out, _ = trained
    result = run("scripts/examples.py", "--weights", str(out / "best"), "--data", str(photos), "--val", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rows = [line.split(" | ") for line in lines if line.startswith("| ![") or line.startswith("| `")]
    assert "| photo | tags | caption (guided=false) | caption | confidence |" in lines
    examples = sorted(path.name for path in (ROOT / "docs" / "examples").glob("*.jpg"))
    assert [row[0].split("(docs/examples/")[1].rstrip(")") for row in rows[: len(examples)]] == examples
    val = [row[0].strip("| `") for row in rows[len(examples):]]
    assert len(val) == 3 and set(val) <= set((photos / "Flickr_8k.devImages.txt").read_text().split())
    assert all(row[1].strip() for row in rows)  # every photo got a caption (the examples: tags, "-" for none)
    assert all(row[2].strip() and row[3].strip() for row in rows[: len(examples)])  # plain and guided captions
    assert all(row[4] == "- |" for row in rows[: len(examples)])  # these weights are not calibrated: no confidence


def test_calibration_fits_on_half_the_val_photos_and_is_saved(trained, photos, tmp_path):
    out, _ = trained
    weights = tmp_path / "weights"
    shutil.copytree(out / "best", weights)
    result = run("-m", "model.calibrate", "--weights", str(weights), "--data", str(photos), "--save")
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((weights / "manifest.json").read_text())["confidence"]
    assert saved == json.loads(result.stdout)
    assert saved["held_out"]["photos"] == VAL // 2 and len(saved["weights"]) == 2
    assert 0 <= saved["held_out"]["expected_calibration_error"] <= 1
    assert set(saved["unlike_photos_flagged"]) == {"blank frame", "noise", "screenshot of text"}
    captioner = Captioner.load(weights)  # the service's loader reads the fit back
    assert captioner.calibration.threshold == saved["threshold"]


@pytest.mark.parametrize("start", ["new decoder", "init"])
def test_fine_tuning_the_head_trains_and_scores_on_photos(trained, photos, start):
    out, _ = trained
    init = ["--init", str(out / "best")] if start == "init" else []
    result = run("scripts/finetune_head.py", "--data", str(photos), "--cache-dir", str(photos.parent / "cache"),
                 "--epochs", "2", *init)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 2 unreadable images" in result.stderr
    assert f"last-block maps of {TRAIN + VAL} photos" in result.stdout
    epochs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [record["epoch"] for record in epochs] == [1, 2]
    assert all(record["val_CIDEr"] >= 0 and record["head_moved"] > 0 for record in epochs)


def test_decoder_ceiling_probes_an_ensemble_and_a_reranking_by_neighbours(trained, photos):
    best = str(trained[0] / "best")
    common = ["--data", str(photos), "--cache-dir", str(photos.parent / "cache")]
    twice = run("scripts/decoder_ceiling.py", *common, "--weights", best, best)
    assert twice.returncode == 0, twice.stderr[-3000:]
    alone, ensemble = [line.split()[-1] for line in twice.stdout.splitlines() if line.strip().startswith("CIDEr")]
    assert "ensemble of 2 decoders" in twice.stdout and alone == ensemble  # two copies average to the same distribution
    reranked = run("scripts/decoder_ceiling.py", *common, "--weights", best, "--neighbours", "3", "--candidates", "3")
    assert reranked.returncode == 0, reranked.stderr[-3000:]
    assert "3 best beams reranked by the captions of the 3 nearest training photos" in reranked.stdout
    assert len([line for line in reranked.stdout.splitlines() if line.strip().startswith("CIDEr")]) == 2
    neither = run("scripts/decoder_ceiling.py", *common, "--weights", best)
    assert neither.returncode == 2 and "error:" in neither.stderr
    for bad in (["--candidates", "0"], ["--neighbours", str(TRAIN + 1)]):
        refused = run("scripts/decoder_ceiling.py", *common, "--weights", best, "--neighbours", "3", *bad)
        assert refused.returncode == 2 and "error:" in refused.stderr.splitlines()[-1], refused.stderr[-2000:]
