import json
from pathlib import Path

import pytest
from PIL import Image

from focalserve_training.data import (
    CaptionDataset,
    InstructionTripletDataset,
    read_caption_jsonl,
    read_llava_triplets,
    strip_image_token,
)


def human(value):
    return {"from": "human", "value": value}


def gpt(value):
    return {"from": "gpt", "value": value}


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "coco").mkdir(parents=True)
    Image.new("L", (8, 6), 128).save(root / "coco" / "000.png")
    Image.new("RGBA", (5, 5), (255, 0, 0, 128)).save(root / "coco" / "001.png")
    return root


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<image>\nWhat is this?", "What is this?"),
        ("What is this?\n<image>", "What is this?"),
        ("  <image> \n\n What is this? ", "What is this?"),
        ("Look at <image>\nthe sky.", "Look at the sky."),
        ("No token here.", "No token here."),
    ],
)
def test_strip_image_token(text, expected):
    assert strip_image_token(text) == expected


def test_llava_reader_pairs_turns_and_skips_bad_records(tmp_path, image_root):
    records = [
        {
            "id": "a",
            "image": "coco/000.png",
            "conversations": [
                human("<image>\nWhat colour is the car?"),
                gpt("Red."),
                human("And the sky?"),
                gpt(" Blue. "),
            ],
        },
        {"id": "text-only", "conversations": [human("Hi"), gpt("Hello")]},
        {"id": "empty-image", "image": "", "conversations": [human("Hi"), gpt("Hello")]},
        "not a record",
        {"id": "no-conversations", "image": "coco/001.png"},
        {
            "id": "messy",
            "image": "coco/001.png",
            "conversations": [
                gpt("Orphan answer."),
                human("Unanswered question?"),
                human("<image>\nWhat shape?"),
                {"from": "gpt"},  # malformed: the question above pairs with nothing
                human("Count them."),
                gpt("Three."),
                "junk",
                human("<image>"),  # empty once the token is stripped
                gpt("Nothing to answer."),
            ],
        },
        {"id": "b", "image": "coco/000.png", "conversations": [human("Again?"), gpt("Yes.")]},
    ]
    triplets = read_llava_triplets(write_json(tmp_path / "llava.json", records), image_root)
    assert [(t.instruction, t.answer, t.image_id) for t in triplets] == [
        ("What colour is the car?", "Red.", "coco/000.png"),
        ("And the sky?", "Blue.", "coco/000.png"),
        ("Count them.", "Three.", "coco/001.png"),
        ("Again?", "Yes.", "coco/000.png"),
    ]
    assert triplets[0].image_path == image_root / "coco" / "000.png"


def test_llava_reader_rejects_non_list(tmp_path, image_root):
    with pytest.raises(ValueError, match="JSON list"):
        read_llava_triplets(write_json(tmp_path / "bad.json", {"a": 1}), image_root)


def test_instruction_dataset_loads_rgb_and_exposes_image_ids(tmp_path, image_root):
    records = [
        {"image": "coco/000.png", "conversations": [human("<image>\nQ1"), gpt("A1")]},
        {"image": "coco/001.png", "conversations": [human("Q2"), gpt("A2")]},
    ]
    triplets = read_llava_triplets(write_json(tmp_path / "l.json", records), image_root)
    dataset = InstructionTripletDataset(triplets)
    assert len(dataset) == 2 and dataset.image_ids == ["coco/000.png", "coco/001.png"]
    item = dataset[1]
    assert item["image"].mode == "RGB" and item["image"].size == (5, 5)
    assert (item["instruction"], item["answer"], item["image_id"]) == ("Q2", "A2", "coco/001.png")


def test_instruction_dataset_uses_custom_loader(tmp_path, image_root):
    records = [{"image": "coco/000.png", "conversations": [human("Q"), gpt("A")]}]
    triplets = read_llava_triplets(write_json(tmp_path / "l.json", records), image_root)
    dataset = InstructionTripletDataset(triplets, loader=lambda path: path.name)
    assert dataset[0]["image"] == "000.png"


def test_caption_jsonl_reader_and_dataset(tmp_path, image_root):
    path = tmp_path / "captions.jsonl"
    path.write_text(
        '{"image": "coco/000.png", "caption": "a grey square"}\n'
        "\n"
        '   \n{"image": "coco/001.png", "caption": " a red square "}\n',
        encoding="utf-8",
    )
    records = read_caption_jsonl(path, image_root)
    assert [(r.image_path, r.caption) for r in records] == [
        (image_root / "coco" / "000.png", "a grey square"),
        (image_root / "coco" / "001.png", "a red square"),
    ]
    dataset = CaptionDataset(records)
    item = dataset[0]
    assert len(dataset) == 2 and item["caption"] == "a grey square"
    assert item["image"].mode == "RGB" and item["image"].size == (8, 6)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('["a", "b"]', "JSON object"),
        ('{"caption": "no image"}', "'image'"),
        ('{"image": "x.png", "caption": ""}', "'caption'"),
        ('{"image": "x.png", "caption": 3}', "'caption'"),
    ],
)
def test_caption_jsonl_reader_names_the_bad_line(tmp_path, bad_line, message):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "a.png", "caption": "ok"}\n\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"captions\.jsonl:3: .*{message}"):
        read_caption_jsonl(path, tmp_path)
