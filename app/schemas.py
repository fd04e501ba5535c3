"""Request and response bodies."""
from __future__ import annotations

from pydantic import BaseModel, Field


class Caption(BaseModel):
    text: str = Field(examples=["a large red circle on a white background"])
    log_prob: float = Field(description="sum of the words' log-probabilities; higher is more likely", examples=[-1.7])


class CaptionResponse(BaseModel):
    captions: list[Caption] = Field(description="best first, texts distinct")
    model: str = Field(description="id of the weights that wrote the captions")
    elapsed_ms: float = Field(description="time spent on this request in the service")


class ModelInfo(BaseModel):
    model: str
    encoder: dict
    vocab_size: int
    training: dict
    scores: dict
    files_sha256: dict[str, str]
    note: str | None = None


class Error(BaseModel):
    detail: str | list


class Status(BaseModel):
    status: str
