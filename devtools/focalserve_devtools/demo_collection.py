"""The demo collection behind `make serve`: ColorShape images under a colour and a shape condition.

It is loaded through the public API (the SDK against a real gateway on 127.0.0.1), exactly as a
user would load their own images, so the demo also proves that path works:

    python -m focalserve_devtools.demo_collection --repository model_repository --data-dir data
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from PIL.Image import Image

from focalserve_client import Client, NotFoundError
from focalserve_client.schemas import CollectionInfo
from focalserve_devtools.launch import running_gateway
from focalserve_training.data import ColorShapeGenerator

COLLECTION = "demo"
FAMILY = "demo"
# Training phrasings of the demo model: the conditions it answers best (training/RESULTS.md).
CONDITIONS = ("what colour is the shape?", "which shape is this?")
DEFAULT_COUNT = 300
DEFAULT_SEED = 101  # not a seed the demo model was trained or evaluated on


def demo_items(count: int, seed: int) -> Iterator[tuple[str, Image, dict[str, str]]]:
    """(id, image, metadata) for `count` ColorShape images; metadata names the ground truth."""
    generator = ColorShapeGenerator(seed=seed)
    for index in range(count):
        sample = generator.sample(index)
        yield f"colorshape-{index:04d}", sample.image, {"colour": sample.colour, "shape": sample.shape}


def load_demo_collection(client: Client, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> CollectionInfo:
    """(Re)create the demo collection and wait until both conditions are searchable.

    Recreated rather than topped up: the stored vectors belong to the model that embedded
    them, and this runs again whenever the demo model is retrained.
    """
    try:
        client.delete_collection(COLLECTION)
    except NotFoundError:
        pass
    client.create_collection(COLLECTION, model=FAMILY)
    client.add_items(COLLECTION, demo_items(count, seed))
    for instruction in CONDITIONS:
        client.add_condition(COLLECTION, instruction)
    for instruction in CONDITIONS:
        client.wait_for_condition(COLLECTION, instruction, timeout=600)
    return client.get_collection(COLLECTION)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    log_file = args.data_dir / "demo-collection.log"
    with running_gateway(args.repository, log_file, data_dir=str(args.data_dir)) as url, Client(url) as client:
        info = load_demo_collection(client, args.count, args.seed)
    print(f"demo collection: {info.items} images in {args.data_dir}, conditions: "
          + ", ".join(repr(c.instruction) for c in info.conditions))


if __name__ == "__main__":
    main()
