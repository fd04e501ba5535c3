"""Service settings, read from CAPTIONER_* environment variables."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPTIONER_")

    weights_dir: Path = Path("weights")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    decoder_precision: Literal["auto", "int8", "bf16", "fp32"] = "auto"  # auto: int8 on a CPU, bf16 on a GPU that has it (runtime.captioner)
    encoder_runtime: Literal["auto", "openvino", "onnxruntime"] = "auto"  # auto: OpenVINO, else ONNX Runtime (runtime.cnn)
    max_upload_bytes: int = Field(10 * 2**20, gt=0)
    max_pixels: int = Field(40_000_000, gt=0)
    decode_concurrency: int = Field(2, ge=1)
    max_batch_size: int = Field(16, ge=1)
    max_batch_wait_ms: float = Field(5.0, ge=0)
    queue_limit: int = Field(64, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    header_timeout_s: float = Field(10.0, gt=0)
    # After SIGTERM, /readyz answers 503 and requests are still taken for this long, so that load
    # balancers stop sending before the port closes; then what is in is answered and the process exits.
    drain_delay_s: float = Field(3.0, ge=0)
