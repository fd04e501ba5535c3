"""The CNN through each runtime, side by side: time per image at batch 1 and 8, and how far its
features move from the eager fp32 path, the naive baseline's.

    python -m bench.encoders [--photos DIR] [--calibration DIR] [--repeats 30]

Runtimes, all on the same pixels (prepared as the service prepares a photo, runtime.preprocess)
and the same threads. In torch, the CNN as model.encoder builds it for the shipped weights:
- eager fp32 NCHW: the naive baseline's CNN (bench/naive.py);
- eager fp32 channels-last: training's features with --encoder-runtime eager, and on a GPU;
- eager bf16: autocast, channels-last;
- torch.compile: inductor, channels-last (needs a C++ compiler).
Without torch, the shipped weights' exported CNN (weights/cnn.onnx, python -m model.export) in the
service's sessions (runtime.cnn):
- ONNX Runtime fp32: the service with CAPTIONER_ENCODER_RUNTIME=onnxruntime, and where OpenVINO cannot load;
- ONNX Runtime int8: static quantization (QDQ, per-channel int8 weights, uint8 activations),
  calibrated on the first --calibration-images photos of --calibration;
- OpenVINO fp32 and bf16: the service's default on a CPU runs it in bf16 where the CPU multiplies
  in it, else in fp32 (runtime.cnn.CNN.load).
Drift: ||f - f_eager|| / ||f_eager|| for each photo of --photos (mean and max). Dev CIDEr: the
shipped weights (decoder, reranker, serving decoding, the search as the service runs it on a CPU)
on the first --dev-images photos of the Flickr8k validation split in --data, their features made
by that runtime (the weights' manifest names the runtime whose features the decoder was trained
on: encoder.runtime). A runtime that cannot be built here is listed with the reason.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import FLICKR8K, ROOT, load_photos, parser, positive, print_table, write_json
from model.data import DatasetFormatError, load_dataset
from model.encoder import build_encoder
from model.evaluate import caption_items, score_captions
from runtime.captioner import Captioner
from runtime.cnn import cpu_threads, onnx_session, openvino_session
from runtime.weights import CNN_GRAPH_FILE

Run = Callable[[np.ndarray], np.ndarray]  # pixels [B, 3, 224, 224] -> features [B, D], fp32
WEIGHTS = ROOT / "weights"


def load_pixels(captioner: Captioner, folder: Path, count: int) -> np.ndarray:
    return np.stack([captioner.preprocess(photo) for photo in load_photos(folder, count)])  # [N, 3, 224, 224]


def eager(trunk: torch.nn.Module, channels_last: bool, bf16: bool = False) -> Run:
    def run(pixels: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(pixels)
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return trunk(pixels).float().numpy()
    return run


def compiled(trunk: torch.nn.Module) -> Run:
    compiled_trunk = torch.compile(trunk)
    return eager(compiled_trunk, channels_last=True)


def onnx_runtime(graph: bytes, folder: Path, calibration: np.ndarray | None) -> Run:
    """The service's ONNX Runtime session (runtime.cnn.onnx_session); with calibration pixels, int8."""
    if calibration is not None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Photos(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"pixels": calibration[i:i + 8]} for i in range(0, len(calibration), 8)])

            def get_next(self):
                return next(self.batches, None)

        exported, prepared, quantized = folder / "cnn.onnx", folder / "cnn-prepared.onnx", folder / "cnn-int8.onnx"
        exported.write_bytes(graph)
        quant_pre_process(str(exported), str(prepared))
        quantize_static(str(prepared), str(quantized), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        graph = quantized.read_bytes()
    session, _ = onnx_session(graph)
    return session


def openvino(graph: bytes, precision: str) -> Run:
    """The service's OpenVINO session (runtime.cnn.openvino_session) in fp32 or bf16."""
    session, _ = openvino_session(graph, precision)
    return session


class DevSplit:
    """The shipped weights captioning the first `count` validation photos of `data` from features a runtime makes."""

    def __init__(self, captioner: Captioner, data: Path, count: int):
        self.items = load_dataset(data).split("val")[:count]
        photos = []
        for item in self.items:
            with Image.open(item.image_path) as image:
                photos.append(image.convert("RGB"))
        self.pixels = np.stack([captioner.preprocess(photo) for photo in photos])  # [N, 3, 224, 224]
        self.captioner = captioner

    def cider(self, run: Run) -> float:
        features = np.concatenate([run(self.pixels[i:i + 8]) for i in range(0, len(self.pixels), 8)])  # [N, D]
        captioner = self.captioner
        captions = caption_items(captioner.search, captioner.vocab, features, captioner.decoding, captioner.reranker)
        predictions = {item.image_path.name: caption for item, caption in zip(self.items, captions)}
        return score_captions(predictions, {item.image_path.name: list(item.captions) for item in self.items}, meteor=False)["CIDEr"]


def ms_per_image(run: Run, pixels: np.ndarray, batch: int, repeats: int) -> float:
    inputs = np.ascontiguousarray(np.tile(pixels[:batch], ((batch + len(pixels) - 1) // len(pixels), 1, 1, 1))[:batch])
    for _ in range(3):
        run(inputs)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(inputs)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1000 / batch


def main(argv: list[str] | None = None) -> int:
    p = parser("encoders", __doc__, weights=False)
    p.add_argument("--photos", type=Path, default=ROOT / "docs" / "examples", help="photos timed and compared (default: docs/examples)")
    p.add_argument("--calibration", type=Path, default=FLICKR8K / "Images",
                   help="photos the int8 model is calibrated on (default: the shared Flickr8k photos)")
    p.add_argument("--calibration-images", type=positive, default=64, help="how many of them (default 64)")
    p.add_argument("--repeats", type=positive, default=30, help="timed calls per runtime and batch size (default 30)")
    p.add_argument("--data", type=Path, default=FLICKR8K, help="the Flickr8k folder of the dev CIDEr (default: the shared one)")
    p.add_argument("--dev-images", type=int, default=1000, help="validation photos captioned per runtime (default 1000, all; 0: none)")
    args = p.parse_args(argv)

    if args.dev_images < 0:
        p.error(f"--dev-images must be 0 or more, got {args.dev_images}")
    captioner = Captioner.load(WEIGHTS, "cpu")  # its preprocessing, and the search, vocabulary and reranker of the dev CIDEr
    recorded = captioner.manifest["encoder"]
    trunk = build_encoder(recorded["name"], "cpu", recorded["pooling"], runtime="eager").trunk
    graph = (WEIGHTS / CNN_GRAPH_FILE).read_bytes()
    pixels = load_pixels(captioner, args.photos, 64)
    reference = eager(trunk, channels_last=False)(pixels)  # [N, D]
    try:
        dev = DevSplit(captioner, args.data, args.dev_images) if args.dev_images else None
    except (DatasetFormatError, OSError) as error:  # no such folder, not a data set, an unreadable photo
        p.error(f"--data {args.data}: {error} (--dev-images 0 skips the dev CIDEr)")

    rows, results = [], {"photos": str(args.photos), "runtimes": {}}  # write_json adds the machine
    with tempfile.TemporaryDirectory(prefix="captioner-encoders-") as folder:
        builders: dict[str, Callable[[], Run]] = {
            "eager fp32 NCHW (naive)": lambda: eager(trunk, channels_last=False),
            "eager fp32 channels-last (runtime eager)": lambda: eager(trunk, channels_last=True),
            "eager bf16 channels-last": lambda: eager(trunk, channels_last=True, bf16=True),
            "torch.compile (inductor)": lambda: compiled(trunk),
            "ONNX Runtime fp32 (runtime onnxruntime)": lambda: onnx_runtime(graph, Path(folder), None),
            "ONNX Runtime int8 (static, QDQ)": lambda: onnx_runtime(
                graph, Path(folder), load_pixels(captioner, args.calibration, args.calibration_images)),
            "OpenVINO fp32": lambda: openvino(graph, "fp32"),
            "OpenVINO bf16 (runtime auto on this CPU)": lambda: openvino(graph, "bf16"),
        }
        for name, build in builders.items():
            try:
                started = time.perf_counter()
                run = build()
                features = run(pixels)
                setup_s = time.perf_counter() - started
                drift = np.linalg.norm(features - reference, axis=1) / np.linalg.norm(reference, axis=1)
                b1, b8 = ms_per_image(run, pixels, 1, args.repeats), ms_per_image(run, pixels, 8, args.repeats)
                cider = dev.cider(run) if dev else None
            except Exception as error:  # a runtime missing here is a row of the table, not the end of the run
                rows.append([name, "-", "-", "-", "-", "-", f"unavailable: {type(error).__name__}: {str(error)[:80]}"])
                results["runtimes"][name] = {"error": f"{type(error).__name__}: {error}"}
                continue
            rows.append([name, f"{b1:.2f}", f"{b8:.2f}", f"{np.mean(drift):.2e}", f"{np.max(drift):.2e}",
                         "-" if cider is None else f"{cider:.4f}", f"{setup_s:.1f} s"])
            results["runtimes"][name] = {"ms_per_image_batch1": b1, "ms_per_image_batch8": b8, "drift_mean": float(np.mean(drift)),
                                         "drift_max": float(np.max(drift)), "dev_cider": cider, "setup_s": setup_s}
    print_table(f"CNN ({recorded['name']}, {recorded['pooling']}) on {len(pixels)} photos, {cpu_threads()} threads; "
                f"dev CIDEr on {len(dev.items) if dev else 0} validation photos",
                ["runtime", "ms/image batch 1", "ms/image batch 8", "drift mean", "drift max", "dev CIDEr", "setup / note"], rows)
    write_json(args.json, {**results, "dev_images": len(dev.items) if dev else 0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
