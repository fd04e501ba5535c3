"""The service's preprocessing (runtime.preprocess: Pillow and numpy) against training's (model.encoder.torch_transform:
torchvision), on photos of every shape and mode, for every fit: the decoder reads in serving what it was trained on."""
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from skimage import data

from model.encoder import IMAGENET_PREPROCESSING, LITE_PREPROCESSING, torch_transform
from runtime.preprocess import FITS, Preprocessing


def photos() -> dict[str, Image.Image]:
    cat, coffee = Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())  # 451 x 300, 600 x 400
    alpha = Image.linear_gradient("L").resize(coffee.size)  # both drop it (an upload's is flattened onto white before: runtime.images)
    return {
        "landscape": coffee.resize((640, 427)),
        "portrait": cat.transpose(Image.Transpose.ROTATE_90),
        "square": Image.fromarray(data.astronaut()).resize((333, 333)),
        "tiny 3x2": Image.fromarray(np.random.default_rng(0).integers(0, 256, (2, 3, 3), dtype=np.uint8)),
        "palette": cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "RGBA": Image.merge("RGBA", (*coffee.split(), alpha)),
    }


def grey_levels(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Normalised pixels back to 0..255 (float: both sides compute the normalisation in their own order)."""
    std, mean = (np.float32(values)[:, None, None] for values in (preprocessing.std, preprocessing.mean))
    return (pixels * std + mean) * 255


@pytest.mark.parametrize("normalisation", [LITE_PREPROCESSING, IMAGENET_PREPROCESSING], ids=["lite", "imagenet"])
@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("name", photos().keys())
def test_serving_prepares_a_photo_as_training_did_within_one_grey_level(name, fit, normalisation):
    """Pillow's antialiased bilinear resize and torchvision's round some values to the next grey level
    (1/255, so 1/255/std after normalisation); most come out the same."""
    preprocessing = replace(normalisation, fit=fit)
    photo = photos()[name]
    served = preprocessing.pixels(photo)
    trained = torch_transform(preprocessing)(photo.convert("RGB")).numpy()  # as model.encoder.Encoder.preprocess calls it
    assert served.shape == trained.shape == (3, 224, 224) and served.dtype == np.float32
    one_grey_level = 1 / 255 / np.float32(preprocessing.std)[:, None, None]
    assert (np.abs(served - trained) <= one_grey_level + 1e-5).all()
    served_levels, trained_levels = (grey_levels(pixels, preprocessing) for pixels in (served, trained))
    assert np.abs(served_levels - np.rint(served_levels)).max() < 1e-3  # both resize in uint8: whole grey levels
    assert (np.rint(served_levels) == np.rint(trained_levels)).mean() > 0.8
