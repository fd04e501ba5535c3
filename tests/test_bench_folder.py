"""bench.folder with tiny counts: it runs end to end and writes the JSON it promises, with positive
numbers. Its timings are printed by the script, never asserted here."""
from __future__ import annotations

from bench import folder
from tests.conftest import ROOT
from tests.test_bench import assert_positive, run


def test_folder(tmp_path):
    results = run(folder, tmp_path, "--images", str(ROOT / "docs" / "examples"), "--photos", "4", "--clients", "2",
                  "--rounds", "2")
    assert results["photos"] == 4 and len(results["runs"]) == 3
    assert all(len(rounds) == 2 for rounds in results["rounds"].values())
    for name, figures in results["runs"].items():
        assert figures["errors"] == 0
        assert_positive({key: figures[key] for key in ("images_per_s", "mean_batch_size", "cnn_ms_per_image",
                                                       "beam_search_ms_per_image", "model_process_cpu_ms_per_image")})
        assert 1 <= figures["mean_batch_size"] <= (4 if name == "in process" else 2)
