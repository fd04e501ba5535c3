"""The README's example captions: what the weights say of the photos in docs/examples, and of the
first validation photos of a data set beside the first of their human captions.

    python scripts/examples.py [--weights weights] [--data ../shared/data/flickr8k] [--val 5]

Prints markdown table rows, with the weights' own decoding (their serving default); the example
photos' rows also give the photo's tags, the plain caption the service writes with guided=false,
and the confidence the service reports ("-" for uncalibrated weights), marked "(low)" under the
threshold.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.settings import Settings  # noqa: E402
from model.data import DatasetFormatError, load_dataset  # noqa: E402
from runtime.captioner import Captioner  # noqa: E402
from runtime.images import decode_image  # noqa: E402
from runtime.weights import WeightsError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
MAX_PIXELS = Settings().max_pixels  # the service's limit, read as the service reads it


def caption(captioner: Captioner, path: Path, guided: bool | None = None) -> tuple[str, str]:
    """The top caption and its confidence as shown, from the photo decoded exactly as the service
    decodes an upload; guided as the request's flag (None: the weights' default)."""
    features = captioner.encode([decode_image(path.read_bytes(), MAX_PIXELS)])
    described = captioner.describe(features, captioner.decoding.but(guided=guided))
    [[(text, _)]] = described
    confidences = captioner.confidences(features, described)
    if confidences is None:
        return text, "-"
    [[value]] = confidences
    return text, f"{value:.2f}" + (" (low)" if value < captioner.calibration.threshold else "")


def tags(captioner: Captioner, path: Path) -> str:
    features = captioner.encode([decode_image(path.read_bytes(), MAX_PIXELS)])
    return ", ".join(f"{tag.word} {tag.probability:.2f}" for tag in captioner.tags(features)[0]) or "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/examples.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="weights folder (default: weights)")
    parser.add_argument("--data", type=Path, help="a data set whose first validation photos to caption too")
    parser.add_argument("--val", type=int, default=5, help="how many validation photos (default 5)")
    args = parser.parse_args(argv)

    try:
        captioner = Captioner.load(args.weights)
        val = load_dataset(args.data).split("val")[: args.val] if args.data else []
    except (DatasetFormatError, WeightsError) as error:
        parser.error(str(error))
    print(f"decoding: {captioner.decoding.to_dict()}\n")
    print("| photo | tags | caption (guided=false) | caption | confidence |\n|---|---|---|---|---:|")
    for path in sorted(EXAMPLES.glob("*.jpg")):
        text, confidence = caption(captioner, path)
        plain, _ = caption(captioner, path, guided=False)
        print(f"| ![{path.stem}](docs/examples/{path.name}) | {tags(captioner, path)} | {plain} | {text} | {confidence} |")
    if val:
        print()
        for item in val:
            print(f"| `{item.image_path.name}` | {caption(captioner, item.image_path)[0]} | {item.captions[0]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
