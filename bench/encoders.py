"""The CNN through each runtime, side by side: time per image at batch 1 and 8, and how far its
features move from the eager fp32 path the shipped decoder was trained on.

    python -m bench.encoders [--photos DIR] [--calibration DIR] [--repeats 30]

Runtimes, all on the same preprocessed pixels and the same threads:
- eager fp32 NCHW: the naive baseline's CNN (bench/naive.py);
- eager fp32 channels-last: the service with CAPTIONER_ENCODER_RUNTIME=eager, and on a GPU;
- eager bf16: autocast, channels-last;
- torch.compile: inductor, channels-last (needs a C++ compiler);
- ONNX Runtime fp32: the service's default on a CPU (model.encoder.use_runtime);
- ONNX Runtime int8: static quantization (QDQ, per-channel int8 weights, uint8 activations),
  calibrated on the first --calibration-images photos of --calibration;
- OpenVINO fp32 and bf16: the service with CAPTIONER_ENCODER_RUNTIME=openvino (the optional
  `openvino` package; bf16 where the CPU multiplies in it), the same exported model.
Drift: ||f - f_eager|| / ||f_eager|| for each photo of --photos (mean and max). A runtime that
cannot be built here is listed with the reason.
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

from bench.common import ROOT, load_photos, parser, positive, print_table, write_json
from model.encoder import build_encoder, export_onnx, onnx_session, openvino_session

Run = Callable[[torch.Tensor], torch.Tensor]  # pixels [B, 3, 224, 224] -> features [B, D] fp32
FLICKR8K_IMAGES = ROOT.parent / "shared" / "data" / "flickr8k" / "Images"


def load_pixels(encoder, folder: Path, count: int) -> torch.Tensor:
    return encoder.preprocess(load_photos(folder, count))  # [N, 3, 224, 224]


def eager(trunk: torch.nn.Module, channels_last: bool, bf16: bool = False) -> Run:
    def run(pixels: torch.Tensor) -> torch.Tensor:
        if channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return trunk(pixels).float()
    return run


def compiled(trunk: torch.nn.Module) -> Run:
    compiled_trunk = torch.compile(trunk)
    return eager(compiled_trunk, channels_last=True)


def onnx_runtime(trunk: torch.nn.Module, folder: Path, calibration: torch.Tensor | None) -> Run:
    """The service's ONNX Runtime path (model.encoder.onnx_session); with calibration photos, int8."""
    model = export_onnx(trunk, 224)
    if calibration is not None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Photos(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"pixels": calibration[i:i + 8].numpy()} for i in range(0, len(calibration), 8)])

            def get_next(self):
                return next(self.batches, None)

        exported, prepared, quantized = folder / "encoder.onnx", folder / "encoder-prepared.onnx", folder / "encoder-int8.onnx"
        exported.write_bytes(model)
        quant_pre_process(str(exported), str(prepared))
        quantize_static(str(prepared), str(quantized), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        model = quantized.read_bytes()
    session, _ = onnx_session(model)
    return lambda pixels: torch.from_numpy(session(pixels.numpy()))


def openvino(trunk: torch.nn.Module, precision: str) -> Run:
    """The service's OpenVINO path (model.encoder.openvino_session) in fp32 or bf16."""
    session, _ = openvino_session(export_onnx(trunk, 224), precision)
    return lambda pixels: torch.from_numpy(session(pixels.numpy()))


def ms_per_image(run: Run, pixels: torch.Tensor, batch: int, repeats: int) -> float:
    inputs = pixels[:batch].repeat((batch + len(pixels) - 1) // len(pixels), 1, 1, 1)[:batch].contiguous()
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
    p.add_argument("--calibration", type=Path, default=FLICKR8K_IMAGES,
                   help="photos the int8 model is calibrated on (default: the shared Flickr8k photos)")
    p.add_argument("--calibration-images", type=positive, default=64, help="how many of them (default 64)")
    p.add_argument("--repeats", type=positive, default=30, help="timed calls per runtime and batch size (default 30)")
    args = p.parse_args(argv)

    encoder = build_encoder(runtime="eager")
    trunk = encoder.trunk
    pixels = load_pixels(encoder, args.photos, 64)
    reference = eager(trunk, channels_last=False)(pixels)  # [N, D]

    rows, results = [], {"photos": str(args.photos), "runtimes": {}}  # write_json adds the machine
    with tempfile.TemporaryDirectory(prefix="captioner-encoders-") as folder:
        builders: dict[str, Callable[[], Run]] = {
            "eager fp32 NCHW (naive)": lambda: eager(trunk, channels_last=False),
            "eager fp32 channels-last (runtime eager)": lambda: eager(trunk, channels_last=True),
            "eager bf16 channels-last": lambda: eager(trunk, channels_last=True, bf16=True),
            "torch.compile (inductor)": lambda: compiled(trunk),
            "ONNX Runtime fp32 (runtime auto on a CPU)": lambda: onnx_runtime(trunk, Path(folder), None),
            "ONNX Runtime int8 (static, QDQ)": lambda: onnx_runtime(
                trunk, Path(folder), load_pixels(encoder, args.calibration, args.calibration_images)),
            "OpenVINO fp32": lambda: openvino(trunk, "fp32"),
            "OpenVINO bf16 (runtime openvino on this CPU)": lambda: openvino(trunk, "bf16"),
        }
        for name, build in builders.items():
            try:
                started = time.perf_counter()
                run = build()
                features = run(pixels)
                setup_s = time.perf_counter() - started
                drift = ((features - reference).norm(dim=1) / reference.norm(dim=1)).numpy()
                b1, b8 = ms_per_image(run, pixels, 1, args.repeats), ms_per_image(run, pixels, 8, args.repeats)
            except Exception as error:  # a runtime missing here is a row of the table, not the end of the run
                rows.append([name, "-", "-", "-", "-", f"unavailable: {type(error).__name__}: {str(error)[:80]}"])
                results["runtimes"][name] = {"error": f"{type(error).__name__}: {error}"}
                continue
            rows.append([name, f"{b1:.2f}", f"{b8:.2f}", f"{np.mean(drift):.2e}", f"{np.max(drift):.2e}", f"{setup_s:.1f} s"])
            results["runtimes"][name] = {"ms_per_image_batch1": b1, "ms_per_image_batch8": b8, "drift_mean": float(np.mean(drift)),
                                         "drift_max": float(np.max(drift)), "setup_s": setup_s}
    print_table(f"CNN (EfficientNet-Lite0, head-mean) on {len(pixels)} photos, {torch.get_num_threads()} threads",
                ["runtime", "ms/image batch 1", "ms/image batch 8", "drift mean", "drift max", "setup / note"], rows)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
