import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

import runtime.graph
from model import consensus
from model.consensus import MIN_PHOTOS
from model.decoder import Decoder, DecoderConfig
from model.encoder import build_encoder
from model.export import export
from model.weights import add_reranker, load_weights, save_weights
from runtime.captioner import Captioner
from runtime.confidence import Calibration
from runtime.decoder import ArrayStep
from runtime.files import sha256_file
from runtime.graph import BeamGraph
from runtime.options import Decoding
from runtime.vocab import Vocab
from runtime.weights import CNN_GRAPH_FILE, CNN_TENSORS_FILE, NotExported, WeightsError, verify, write_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A real (untrained) decoder for the real encoder, saved and exported the way training does it."""
    torch.manual_seed(0)
    encoder = build_encoder(runtime="eager")
    vocab = Vocab.build(["a red circle on a white background", "a blue square"], min_count=1)
    decoder = Decoder(DecoderConfig(len(vocab), encoder.feature_dim, 8, 16, 0.0))
    directory = tmp_path_factory.mktemp("weights")
    save_weights(directory, decoder, vocab,
                 {"encoder": {"name": encoder.name, "pooling": encoder.pooling, "fingerprint": encoder.fingerprint}})
    export(directory)
    return directory


def test_round_trip(weights_dir):
    decoder, vocab, manifest = load_weights(weights_dir)
    assert manifest["model_id"].startswith("captioner-")
    assert set(manifest["files"]) == {"decoder.safetensors", "vocab.json", "config.json", CNN_GRAPH_FILE, CNN_TENSORS_FILE}
    assert manifest["export"]["fingerprint"] == manifest["encoder"]["fingerprint"] and manifest["export"]["feature_dim"] == 1280
    assert decoder.config.vocab_size == len(vocab)
    assert not decoder.training


def test_captioner_returns_distinct_sorted_captions(weights_dir):
    captioner = Captioner.load(weights_dir, "cpu")
    results = captioner.caption([Image.new("RGB", (64, 48), "red"), Image.new("RGB", (30, 30), "blue")],
                                Decoding(beam_size=4, max_length=6), num_captions=3)
    assert len(results) == 2
    for captions in results:
        texts = [text for text, _ in captions]
        assert len(texts) == 3 == len(set(texts))
        assert all(text and len(text.split()) <= 6 for text in texts)
        assert [lp for _, lp in captions] == sorted((lp for _, lp in captions), reverse=True)


@pytest.mark.parametrize("name", ["decoder.safetensors", "vocab.json", "config.json", CNN_GRAPH_FILE, CNN_TENSORS_FILE])
def test_a_changed_byte_is_refused(weights_dir, tmp_path, name):
    copy = tmp_path / "copy"
    shutil.copytree(weights_dir, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=f"{name} does not match its manifest"):
        verify(copy)


def test_missing_file_and_missing_manifest_are_refused(weights_dir, tmp_path):
    with pytest.raises(WeightsError, match="manifest.json is missing"):
        verify(tmp_path)
    (tmp_path / "manifest.json").write_text((weights_dir / "manifest.json").read_text())
    with pytest.raises(WeightsError, match="is missing"):
        verify(tmp_path)


def test_weights_for_another_encoder_are_refused(weights_dir, tmp_path):
    """Exported, the CNN must be the one the decoder was trained on; unexported, the export refuses to
    write another."""
    shutil.copytree(weights_dir, tmp_path, dirs_exist_ok=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["encoder"]["fingerprint"] = "efficientnet-lite0:0000:other"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="was exported from encoder .* but the decoder reads 'efficientnet-lite0:0000:other'"):
        Captioner.load(tmp_path, "cpu")
    del manifest["export"], manifest["files"][CNN_GRAPH_FILE], manifest["files"][CNN_TENSORS_FILE]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="trained on features of encoder 'efficientnet-lite0:0000:other'"):
        export(tmp_path)


def test_no_unsafe_unpickling_anywhere_in_the_code():
    """torch.load only with weights_only=True; no pickle at all."""
    offenders = []
    for path in [*ROOT.glob("app/**/*.py"), *ROOT.glob("runtime/**/*.py"), *ROOT.glob("model/**/*.py"), *ROOT.glob("bench/**/*.py")]:
        text = path.read_text()
        if re.search(r"^\s*(import pickle|from pickle)", text, re.M):
            offenders.append(f"{path}: pickle")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            if "weights_only=True" not in call:
                offenders.append(f"{path}: {call}")
    assert not offenders


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_the_decoder_runs_in_the_precision_asked_for(weights_dir, precision):
    """int8 and fp32: the OpenVINO graph of the whole search; bf16: torch's loop (runtime.gpu)."""
    captioner = Captioner.load(weights_dir, "cpu", precision)
    assert captioner.precision == precision
    assert isinstance(captioner.search, ArrayStep if precision == "bf16" else BeamGraph)
    [[(text, log_prob)]] = captioner.caption([Image.new("RGB", (64, 48), "red")], Decoding(beam_size=2, max_length=6))
    assert text and log_prob < 0


def decoder_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("decoder")]


def test_a_cpu_decodes_in_the_int8_graph_by_default_and_steps_down_one_log_line_at_a_time(weights_dir, monkeypatch, caplog):
    """build_search: an int8 graph that drifts gives way to the fp32 graph; without OpenVINO, both give
    way to numpy's loop. Each step down is one log line, and captions still come."""
    assert Captioner.load(weights_dir, "cpu").precision == "int8"

    monkeypatch.setitem(runtime.graph.MAX_DRIFT, "int8", -1.0)  # no int8 layer is near enough to fp32
    with caplog.at_level("WARNING", logger="captioner"):
        fp32_graph = Captioner.load(weights_dir, "cpu")
    assert isinstance(fp32_graph.search, BeamGraph) and fp32_graph.precision == "fp32"
    [line] = decoder_lines(caplog)
    assert line.startswith("decoder: fp32 graph, not the int8 graph: RuntimeError: the int8 decoder graph's image layer")

    def not_installed():
        raise ModuleNotFoundError("No module named 'openvino'")

    caplog.clear()
    monkeypatch.setattr(runtime.graph, "openvino_core", not_installed)  # the graphs' one Core: "missing" there
    with caplog.at_level("WARNING", logger="captioner"):
        numpy_loop = Captioner.load(weights_dir, "cpu")
    assert isinstance(numpy_loop.search, ArrayStep) and numpy_loop.precision == "fp32"
    assert [line.split(": ModuleNotFoundError")[0] for line in decoder_lines(caplog)] == [
        "decoder: fp32 graph, not the int8 graph", "decoder: numpy's fp32 loop, not the fp32 graph"]

    photo, decoding = Image.new("RGB", (64, 48), "red"), Decoding(beam_size=2, max_length=6)
    [[(text, _)]] = numpy_loop.caption([photo], decoding)
    assert text
    assert fp32_graph.caption([photo], decoding)[0][0][0] == text  # the same fp32 search, as a graph or a loop


def test_a_cpu_without_openvinos_kernels_still_loads_and_captions(weights_dir):
    """oneDNN held to AVX2 on a CPU that has more: OpenVINO compiles the int8 matmuls and the CNN for the
    CPU it sees, then has no kernel at the first call. Before the int8 layers were checked at load, the
    first caption raised. Now each precision and runtime given up is one log line, and torch is never imported."""
    script = "\n".join([
        "import logging, sys; logging.basicConfig(format='%(message)s')",
        "from PIL import Image; from runtime.captioner import Captioner; from runtime.options import Decoding",
        f"captioner = Captioner.load({str(weights_dir)!r}, 'cpu')",
        "[[(text, _)]] = captioner.caption([Image.new('RGB', (64, 48), 'red')], Decoding(beam_size=2, max_length=6))",
        "print(captioner.precision, type(captioner.search).__name__, captioner.runtime, 'torch' in sys.modules, repr(text))",
    ])
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    precision, search, cnn_runtime, torch_imported, text = result.stdout.split(maxsplit=4)
    assert text.strip("'\n") and torch_imported == "False"
    given_up = [line for line in result.stderr.splitlines() if line.startswith(("decoder: ", "encoder runtime: "))]
    assert not [line for line in result.stderr.splitlines() if line.startswith(("Exception from", "[CPU]"))]  # one line each
    if search == "ArrayStep":
        assert any(line.startswith("decoder: numpy's fp32 loop, not the fp32 graph: ") for line in given_up)
    elif precision != "int8":
        assert any(line.startswith("decoder: fp32 graph, not the int8 graph: ") for line in given_up)
    if not cnn_runtime.startswith("openvino"):
        assert any(line.startswith("encoder runtime: ") for line in given_up)


@pytest.fixture(scope="module")
def reranked_dir(weights_dir, tmp_path_factory):
    """weights_dir with a consensus reranker fitted on random features, serving with it."""
    directory = tmp_path_factory.mktemp("reranked")
    shutil.copytree(weights_dir, directory, dirs_exist_ok=True)
    features = np.random.default_rng(0).standard_normal((2 * MIN_PHOTOS, verify(weights_dir)["export"]["feature_dim"]))
    references = [[["a", "red", "circle"], ["a", "blue", "square"]]] * (2 * MIN_PHOTOS)
    add_reranker(directory, consensus.fit(features, references), {"fitted_on": "random features"})
    manifest = verify(directory)
    manifest["decoding"] = Decoding(beam_size=3, max_length=6, consensus_weight=100.0).to_dict()
    write_manifest(directory, manifest)
    return directory


def test_weights_with_a_reranker_caption_through_it(reranked_dir):
    captioner = Captioner.load(reranked_dir, "cpu")
    assert captioner.reranker is not None and captioner.decoding.consensus_weight == 100.0
    [captions] = captioner.caption([Image.new("RGB", (64, 48), "red")], num_captions=3)
    assert len({text for text, _ in captions}) == 3
    data = bytearray((reranked_dir / "reranker.safetensors").read_bytes())
    copy = reranked_dir.parent / "changed-reranker"
    shutil.copytree(reranked_dir, copy)
    data[-10] ^= 0x01
    (copy / "reranker.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="reranker.safetensors does not match its manifest"):
        verify(copy)


def test_a_reranker_for_other_image_vectors_is_refused(reranked_dir, tmp_path):
    shutil.copytree(reranked_dir, tmp_path, dirs_exist_ok=True)
    other = consensus.fit(np.random.default_rng(0).standard_normal((2 * MIN_PHOTOS, 16)), [[["a", "red", "circle"]]] * (2 * MIN_PHOTOS))
    add_reranker(tmp_path, other, {"fitted_on": "16-d features"})
    with pytest.raises(WeightsError, match="reads 16-d image vectors, but the CNN gives 1280-d ones"):
        Captioner.load(tmp_path, "cpu")


def test_a_reranker_of_an_older_layout_is_refused_with_what_to_do(reranked_dir, tmp_path):
    shutil.copytree(reranked_dir, tmp_path, dirs_exist_ok=True)
    tensors = load_file(tmp_path / "reranker.safetensors")
    save_file(tensors, tmp_path / "reranker.safetensors", {"grams": "[]", "rare_idf": "1.0", "mean_length": "9.0"})
    manifest = verify(reranked_dir)
    manifest["files"]["reranker.safetensors"] = sha256_file(tmp_path / "reranker.safetensors")
    write_manifest(tmp_path, manifest)
    with pytest.raises(WeightsError, match=r"older version of captioner: fit it again \(python -m model.fit_reranker\)"):
        Captioner.load(tmp_path, "cpu")


def test_a_decoding_that_reranks_needs_its_reranker(reranked_dir, tmp_path):
    shutil.copytree(reranked_dir, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("reranker.safetensors"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["files"]["reranker.safetensors"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="reranks by consensus, but it lists no reranker.safetensors"):
        verify(tmp_path)


def test_new_weights_drop_the_reranker_tag_map_and_export_of_the_old(reranked_dir, tmp_path):
    """What was made for the old decoder goes with it: the new one must be exported again before it serves."""
    shutil.copytree(reranked_dir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "tags.json").write_text("{}")  # a map made for the old vocabulary
    decoder, vocab, manifest = load_weights(tmp_path)
    save_weights(tmp_path, decoder, vocab, {"encoder": manifest["encoder"]})
    assert not [name for name in ("reranker.safetensors", "tags.json", CNN_GRAPH_FILE, CNN_TENSORS_FILE) if (tmp_path / name).exists()]
    assert set(verify(tmp_path)["files"]) == {"decoder.safetensors", "vocab.json", "config.json"}
    with pytest.raises(NotExported, match=re.escape(f"python -m model.export --weights {tmp_path}")):
        Captioner.load(tmp_path, "cpu")


def test_a_confidence_fitted_on_agreement_needs_the_reranker(reranked_dir, tmp_path):
    shutil.copytree(reranked_dir, tmp_path, dirs_exist_ok=True)
    manifest = verify(tmp_path)
    manifest["confidence"] = Calibration((1.0, -0.1, 8.0), 1.0, 0.4).to_dict()
    write_manifest(tmp_path, manifest)
    captioner = Captioner.load(tmp_path, "cpu")
    features = captioner.encode([Image.new("RGB", (64, 48), "red")])
    captions = captioner.describe(features, num_captions=2)
    [confidences] = captioner.confidences(features, captions)
    assert len(confidences) == 2 and all(0 < c < 1 for c in confidences)
    del manifest["files"]["reranker.safetensors"]
    manifest["decoding"]["consensus_weight"] = 0.0
    write_manifest(tmp_path, manifest)
    with pytest.raises(WeightsError, match="calibrated with a consensus reranker"):
        Captioner.load(tmp_path, "cpu")
