"""Smoke tests of the benchmark scripts with tiny counts: they run end to end and write the JSON
they promise, with positive numbers. Timings are printed by the scripts, never asserted here."""
from __future__ import annotations

import json
import subprocess
import sys

from bench import ab, beam, encoders, latency, startup, throughput, train
from bench.common import serving_beam_size
from tests.conftest import ROOT

MACHINE_KEYS = {"platform", "cpu", "cpu_count", "openvino", "onnxruntime", "torch", "threads", "python", "load_average"}
PERCENTILES = {"p50_ms", "p90_ms", "p99_ms"}


def run(script, tmp_path, *args: str) -> dict:
    path = tmp_path / "results.json"
    assert script.main([*args, "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert MACHINE_KEYS <= set(results["machine"]) and results["machine"]["threads"] >= 1
    return results


def assert_positive(numbers: dict) -> None:
    assert numbers and all(value > 0 for value in numbers.values()), numbers


def test_the_service_benchmarks_import_no_torch():
    """The service runs on a CPU without torch, and so do the benchmarks that time it in this process:
    they import it (bench.naive) only once they have timed the service."""
    code = "import sys, bench.latency, bench.throughput, bench.folder, bench.startup; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout == "False\n"


def test_latency(tmp_path):
    results = run(latency, tmp_path, "--requests", "5", "--warmup", "1", "--repeats", "3")
    assert results["errors"] == 0
    assert set(results["end_to_end"]) == PERCENTILES == set(results["naive"])
    assert set(results["stages"]) == {"decode", "preprocess", "cnn", "beam_search", "serialisation"}
    for percentiles in [results["end_to_end"], results["naive"], *results["stages"].values()]:
        assert_positive(percentiles)
    assert set(results["server_mean_ms"]) == {"request", "cnn", "beam_search"}
    assert_positive(results["server_mean_ms"])
    assert results["server_cpu_ms_per_request"] > 0
    assert set(results["speedup"]) == {"p50", "p90", "p99"}
    assert_positive(results["speedup"])


def test_ab_times_each_checkout_once_a_round(tmp_path):
    results = run(ab, tmp_path, "--checkout", str(ROOT), "--checkout", ".", "--rounds", "2", "--requests", "3",
                  "--clients", "2", "--load-requests", "4", "--warmup", "1")
    assert results["rounds"] == 2 and len(results["checkouts"]) == 2  # one folder twice: an A/A run
    assert [len(checkout["runs"]) for checkout in results["checkouts"]] == [2, 2]
    for timed in (timed for checkout in results["checkouts"] for timed in checkout["runs"]):
        assert timed["errors"] == 0
        assert_positive({key: timed[key] for key in ("p50_ms", "images_per_s", "loaded_p50_ms", "server_cpu_ms_per_request")})


def test_throughput(tmp_path):
    results = run(throughput, tmp_path, "--clients", "1", "2", "--requests", "4", "--warmup", "2", "--naive-images", "2")
    assert results["naive_images_per_s"] > 0
    assert [level["clients"] for level in results["levels"]] == [1, 2]
    for level in results["levels"]:
        assert level["errors"] == 0
        assert_positive({key: level[key] for key in ("images_per_s", "mean_batch_size", "server_cpu_ms_per_request",
                                                     "ratio_vs_naive", *PERCENTILES)})
        assert 1 <= level["mean_batch_size"] <= level["clients"]


def test_train(tmp_path):
    results = run(train, tmp_path, "--images", "16", "--vocab-size", "50", "--embed-dim", "8", "--hidden-dim", "16",
                  "--batch-size", "8", "--epochs-fraction", "0.2", "--extract-images", "2")
    assert set(results["training"]) == {"ours", "ours_fp32", "naive"}
    for configuration in results["training"].values():
        assert configuration["seconds_per_epoch"] > 0 and configuration["steps_timed"] >= 1
    assert results["extraction"]["images"] == 2
    assert_positive({key: results["extraction"][key] for key in ("ours_per_s", "naive_per_s")})
    assert set(results["ratios"]) == {"training_naive_over_ours", "training_fp32_over_bf16", "extraction_ours_over_naive"}
    assert_positive(results["ratios"])


def test_startup(tmp_path):
    results = run(startup, tmp_path, "--repeats", "1")
    assert set(results["startup"]) == {"onnxruntime", "openvino"}
    assert_positive({runtime: r["median_s"] for runtime, r in results["startup"].items()})


def test_encoders(tmp_path):
    dev_images = 4 if (encoders.FLICKR8K / "Flickr8k.token.txt").is_file() else 0  # the shared photos, where they are
    results = run(encoders, tmp_path, "--repeats", "1", "--calibration", str(ROOT / "docs" / "examples"), "--calibration-images", "4",
                  "--dev-images", str(dev_images))
    assert len(results["runtimes"]) == 8 and results["dev_images"] == dev_images
    assert "error" not in results["runtimes"]["OpenVINO bf16 (runtime auto on this CPU)"]  # a test dependency: timed here
    fp32 = results["runtimes"]["ONNX Runtime fp32 (runtime onnxruntime)"]
    assert fp32["drift_max"] < 1e-4 and fp32["ms_per_image_batch1"] > 0
    assert fp32["dev_cider"] is None if not dev_images else 0 <= fp32["dev_cider"] < 10


def test_beam(tmp_path):
    results = run(beam, tmp_path, "--repeats", "3")
    assert results["vocabulary"] > 1000 and results["beams"] == serving_beam_size(ROOT / "weights")  # the shipped weights
    assert set(results["parts_us"]) == {"int8 graph", "fp32 graph", "fp32 numpy", "bf16 torch"}  # torch: bench.train's
    for search in results["parts_us"].values():
        parts = dict(search)
        by_images = parts.pop("matmul_by_images")
        assert set(by_images) == {"1", "4", "8", "16"}  # images in a batch, as JSON keys
        assert_positive(parts)
        assert_positive(by_images)
    int8, bf16, fp32, numpy = (results["parts_us"][search]["weight_bytes_per_step"]
                               for search in ("int8 graph", "bf16 torch", "fp32 graph", "fp32 numpy"))
    assert int8 * 4 == bf16 * 2 == fp32 == numpy
