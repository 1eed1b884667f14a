"""LLaVA visual-instruction data as (image, instruction, answer) triplets for FocalLens.

Each human turn (with the ``<image>`` token removed) and the gpt turn that follows it
form one triplet; records without an image and malformed turns are skipped rather than
failing a long preprocessing run on one bad record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from focalserve_training.data.images import ImageLoader, load_rgb

IMAGE_TOKEN = "<image>"
_IMAGE_TOKEN_RE = re.compile(r"\s*" + re.escape(IMAGE_TOKEN) + r"\s*")


@dataclass(frozen=True)
class InstructionTriplet:
    """``image_id`` is the image's relative path, so records sharing an image group."""

    image_path: Path
    instruction: str
    answer: str
    image_id: str


def read_llava_triplets(path: str | Path, image_root: str | Path) -> list[InstructionTriplet]:
    """Read a LLaVA JSON list of records into triplets, in file order."""
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    root = Path(image_root)
    return [triplet for record in records for triplet in _record_triplets(record, root)]


def strip_image_token(text: str) -> str:
    """Remove ``<image>`` and the whitespace around it, keeping one space between words."""
    return _IMAGE_TOKEN_RE.sub(" ", text).strip()


def _record_triplets(record: object, root: Path) -> list[InstructionTriplet]:
    if not isinstance(record, dict):
        return []
    image = record.get("image")
    conversations = record.get("conversations")
    if not isinstance(image, str) or not image or not isinstance(conversations, list):
        return []
    turns = [_turn(t) for t in conversations]
    triplets = []
    for (speaker, question), (next_speaker, reply) in zip(turns, turns[1:], strict=False):
        instruction, answer = strip_image_token(question), reply.strip()
        if speaker == "human" and next_speaker == "gpt" and instruction and answer:
            triplets.append(InstructionTriplet(root / image, instruction, answer, image))
    return triplets


def _turn(turn: object) -> tuple[str | None, str]:
    """(speaker, text); a malformed turn gets speaker None and so pairs with nothing."""
    if not isinstance(turn, dict):
        return None, ""
    speaker, value = turn.get("from"), turn.get("value")
    if not isinstance(speaker, str) or not isinstance(value, str):
        return None, ""
    return speaker, value


class InstructionTripletDataset(Dataset):
    """Triplets as the dicts the FocalLens collate expects; ``image_ids`` feeds the sampler."""

    def __init__(self, triplets: list[InstructionTriplet], loader: ImageLoader = load_rgb) -> None:
        self.triplets = triplets
        self.loader = loader
        self.image_ids = [t.image_id for t in triplets]

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> dict:
        triplet = self.triplets[index]
        return {
            "image": self.loader(triplet.image_path),
            "instruction": triplet.instruction,
            "answer": triplet.answer,
            "image_id": triplet.image_id,
        }
