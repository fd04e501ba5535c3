"""Request and response bodies."""
from __future__ import annotations

from pydantic import BaseModel, Field


class Caption(BaseModel):
    text: str = Field(examples=["a dog runs through the grass"])
    log_prob: float = Field(description="sum of the words' log-probabilities; higher is more likely", examples=[-1.7])
    confidence: float | None = Field(
        description="probability that the caption is acceptable, calibrated on held-out captioned photos "
                    "(see /v1/model: confidence.proxy); null for weights never calibrated",
        ge=0, le=1, examples=[0.62])


class Tag(BaseModel):
    word: str = Field(description="what the CNN's ImageNet classifier sees, as the word a caption would use", examples=["cat"])
    class_name: str = Field(description="the most probable ImageNet class behind the word", examples=["Egyptian cat"])
    probability: float = Field(
        description="calibrated probability that a person describing the photo would use the word (see /v1/model: tags)",
        ge=0, le=1, examples=[0.83])


class CaptionResponse(BaseModel):
    captions: list[Caption] = Field(description="best first, texts distinct")
    tags: list[Tag] = Field(
        description="the photo's confident tags, best first (at most 5; empty when none reaches the threshold or the "
                    "weights have no tag map). A guided caption (guided=true, the default where the weights have a tag "
                    "map) says the first of them")
    low_confidence: bool | None = Field(
        description="the best caption's confidence is under the threshold chosen on the validation photos: "
                    "it may well be wrong; null for weights never calibrated")
    model: str = Field(description="id of the weights that wrote the captions")
    elapsed_ms: float = Field(description="time spent on this request in the service")


class ModelInfo(BaseModel):
    model: str
    encoder: dict
    vocab_size: int
    decoding: dict = Field(description="the default decoding of /v1/captions, chosen on the validation split")
    data: dict = Field(description="the data set the decoder was trained on, and its split sizes")
    training: dict
    scores: dict = Field(description="per split, the captions' scores with the default decoding")
    files_sha256: dict[str, str]
    note: str | None = Field(None, description="what the model was trained on, what it is good and bad at")
    confidence: dict | None = Field(None, description="how caption confidence was calibrated, and how well it held on unseen photos")
    consensus: dict | None = Field(None, description="the reranker that chooses among the beams (decoding.consensus_weight): "
                                                     "what it was fitted on; null for weights without one")
    tags: dict = Field(description="how the tag map was made and how the tag probabilities were calibrated "
                                   "(available: false, with the reason, for weights whose captions go without tags)")


class FieldError(BaseModel):
    loc: list[str] = Field(description="where: the part of the request, then the field", examples=[["query", "beam_size"]])
    msg: str = Field(examples=["Input should be less than or equal to 10"])
    type: str = Field(examples=["less_than_equal"])


class Error(BaseModel):
    """Every 4xx and 5xx answer has this shape."""

    detail: str = Field(description="what went wrong, in one sentence", examples=["image has more than 40000000 pixels"])
    errors: list[FieldError] | None = Field(None, description="for an invalid request (422): each field that failed")


class Status(BaseModel):
    status: str
