"""The CNN as the service runs it on a CPU: the exported graph (cnn.onnx in the weights folder,
written by python -m model.export) in OpenVINO, or in ONNX Runtime where OpenVINO cannot run.

OpenVINO compiles it in bf16 where the CPU multiplies in it (AVX512-BF16, AMX), else in fp32;
bf16 moves the features 4-6% and is about twice as fast as ONNX Runtime's fp32 (bench/encoders.py).
The shipped decoder was trained on OpenVINO's bf16 features, the ones it is served. Each runtime is
checked at load on the probe that the export step wrote beside the graph (in cnn.safetensors:
pixels and the features eager PyTorch gave for them): one that cannot load, or whose features drift
beyond its precision's tolerance, gives way to the next with one log line, never wrong numbers.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger("captioner")
# ||f - f_eager|| / ||f_eager|| allowed on the probe batch: fp32 is at about 1e-6, bf16 OpenVINO at about 0.07;
# a broken kernel or a wrong graph is at 1 or more.
MAX_RUNTIME_DRIFT = {"fp32": 1e-4, "bf16": 0.2}
RUNTIME_LABELS = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
# A runtime keeps the working memory of the largest batch it has run (OpenVINO: about 9 MiB a photo;
# a process that had captioned 16 photos at once held 369 MiB, 258 run 2 at a time), and is as fast
# per photo on 1 as on 16 (2.6-3.4 ms, 2-core EPYC): so a batch runs through it 2 photos at a time.
PHOTOS_PER_RUN = 2
Session = Callable[[np.ndarray], np.ndarray]  # NCHW fp32 pixels [B, 3, H, W] -> features [B, D]


class RuntimeUnavailable(RuntimeError):
    """No runtime here runs the exported CNN and gives its probe's features."""


def one_line(error: Exception) -> str:
    """An error as one log line: OpenVINO's messages carry a line per layer of its code."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def cpu_threads() -> int:
    """The threads a runtime runs on: OMP_NUM_THREADS where set (as torch reads it), else the cores this process may use."""
    try:
        return max(int(os.environ["OMP_NUM_THREADS"]), 1)
    except (KeyError, ValueError):
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def drift(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest relative distance of a row of got from its row of expected."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float((np.linalg.norm(got - expected, axis=1) / np.maximum(np.linalg.norm(expected, axis=1), 1e-12)).max())


class CNN:
    """The exported CNN: pixels [B, 3, size, size] (runtime.preprocess) -> features [B, D]."""

    def __init__(self, session: Session, runtime: str):
        self._session = session
        self.runtime = runtime  # openvino-bf16, openvino-fp32 or onnxruntime: what the service reports

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, np.float32)
        runs = [self._session(pixels[start:start + PHOTOS_PER_RUN]) for start in range(0, len(pixels), PHOTOS_PER_RUN)]
        return np.concatenate(runs)  # [B, D]

    @classmethod
    def load(cls, graph: Path, probe: tuple[np.ndarray, np.ndarray], runtime: str = "auto") -> CNN:
        """graph: the ONNX file; probe: pixels and the eager features for them. runtime: auto or
        openvino (OpenVINO, then ONNX Runtime), or onnxruntime."""
        if runtime not in ("auto", "openvino", "onnxruntime"):
            raise ValueError(f"the CPU runtime runs the CNN in openvino or onnxruntime, not {runtime!r}")
        try:
            return cls(*checked_session(Path(graph).read_bytes(), probe, runtime))
        except RuntimeUnavailable as error:
            raise RuntimeUnavailable(f"no runtime runs {graph} here: {error}") from None


def checked_session(model: bytes, probe: tuple[np.ndarray, np.ndarray], runtime: str) -> tuple[Session, str]:
    """The first runtime in line (OpenVINO, then ONNX Runtime; ONNX Runtime alone for runtime
    onnxruntime) that loads the ONNX model and gives the probe's eager features (probe: pixels and
    those features) within its precision's tolerance, and its name: openvino-bf16, openvino-fp32 or
    onnxruntime. Each that fails gives way to the next with one log line; RuntimeUnavailable when
    the last fails, naming it and why. The service's CNN (CNN.load) and training's (model.encoder)."""
    pixels, expected = probe
    candidates = [("openvino", openvino_session), ("onnxruntime", onnx_session)][runtime == "onnxruntime":]
    for index, (name, build) in enumerate(candidates):
        try:
            session, precision = build(model)
            moved = drift(session(pixels), expected)
            if not moved <= MAX_RUNTIME_DRIFT[precision]:
                raise RuntimeError(f"its {precision} features differ from the eager path's by {moved:.1e} "
                                   f"(allowed {MAX_RUNTIME_DRIFT[precision]:.0e})")
        except Exception as error:  # ImportError, session errors, an unsupported CPU: the next runtime
            if index + 1 == len(candidates):
                raise RuntimeUnavailable(f"{RUNTIME_LABELS[name]}: {one_line(error)}") from None
            logger.warning("encoder runtime: %s, not %s: %s", RUNTIME_LABELS[candidates[index + 1][0]],
                           RUNTIME_LABELS[name], one_line(error))
            continue
        return session, name if name == "onnxruntime" else f"{name}-{precision}"
    raise AssertionError("unreachable")


def onnx_session(model: bytes) -> tuple[Session, str]:
    """ONNX Runtime's CPU session on the exported model, in fp32, as a function of the pixels."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    options.inter_op_num_threads = 1
    # Its threads would otherwise spin after each call, taking the cores from the beam search
    # that follows (measured: beam search 7 -> 36 ms a request under the service).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return (lambda pixels: session.run(None, {"pixels": pixels})[0]), "fp32"


@functools.cache
def openvino_core():
    """One OpenVINO Core for the process: a second one, queried, makes the process crash later
    (seen here on the next subprocess it started; ultralytics/ultralytics#25864 found the same)."""
    import openvino

    return openvino.Core()


def openvino_session(model: bytes, precision: str | None = None) -> tuple[Session, str]:
    """OpenVINO's CPU plugin on the exported model, as a function of the pixels, and its precision:
    bf16 or fp32 as asked, or bf16 where the CPU multiplies in it."""
    core = openvino_core()
    precision = precision or ("bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "fp32")
    compiled = core.compile_model(core.read_model(model=model), "CPU", {
        "INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp32": "f32"}[precision], "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": cpu_threads()})
    request, output = compiled.create_infer_request(), compiled.output(0)
    return (lambda pixels: request.infer({0: pixels})[output].copy()), precision
