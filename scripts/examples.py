"""The README's example captions: what the weights say of the photos in docs/examples, and of the
first validation photos of a data set beside the first of their human captions.

    python scripts/examples.py [--weights weights] [--data ../shared/data/flickr8k] [--val 5]

Prints markdown table rows, with the weights' own decoding (their serving default).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.images import decode_image  # noqa: E402
from app.settings import Settings  # noqa: E402
from model.captioner import Captioner  # noqa: E402
from model.data import DatasetFormatError, load_dataset  # noqa: E402
from model.weights import WeightsError  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
MAX_PIXELS = Settings().max_pixels  # the service's limit, read as the service reads it


def caption(captioner: Captioner, path: Path) -> str:
    """The top caption, from the photo decoded exactly as the service decodes an upload."""
    [[(text, _)]] = captioner.caption([decode_image(path.read_bytes(), MAX_PIXELS)])
    return text


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
    for path in sorted(EXAMPLES.glob("*.jpg")):
        print(f"| ![{path.stem}](docs/examples/{path.name}) | {caption(captioner, path)} |")
    if val:
        print()
        for item in val:
            print(f"| `{item.image_path.name}` | {caption(captioner, item.image_path)} | {item.captions[0]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
