"""captioner's model: frozen CNN encoder -> image vector v -> LSTM decoder -> beam search."""
from model.captioner import Captioner

__all__ = ["Captioner"]
