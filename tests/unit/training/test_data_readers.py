import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from focalserve_training.data import (
    CaptionDataset,
    InstructionTripletDataset,
    MissingImagesError,
    read_caption_jsonl,
    read_llava_triplets,
    strip_image_token,
    strip_prompt_suffix,
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


def skip_counts(caplog) -> dict[str, int]:
    """The counts the reader's one warning carries (on the log record, not parsed from its text)."""
    [record] = [record for record in caplog.records if hasattr(record, "skipped")]
    assert record.levelno == logging.WARNING
    return record.skipped


def test_llava_reader_pairs_turns_and_skips_bad_records(tmp_path, image_root, caplog):
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
    assert skip_counts(caplog) == {"text-only": 1, "malformed": 3}


def test_llava_reader_stops_on_missing_images_naming_how_many_and_the_first(tmp_path, image_root):
    records = [
        {"image": f"coco/{name}.png", "conversations": [human("Q"), gpt("A")]}
        for name in ("000", "gone-1", "gone-2", "001", "gone-1", *(f"x{i}" for i in range(6)))
    ]
    with pytest.raises(MissingImagesError) as raised:
        read_llava_triplets(write_json(tmp_path / "l.json", records), image_root)
    error = raised.value
    assert error.count == 8 and error.source == tmp_path / "l.json"  # gone-1 counted once
    assert error.paths == tuple(image_root / "coco" / f"{n}.png" for n in ("gone-1", "gone-2", "x0", "x1", "x2"))
    assert "8 referenced image files do not exist" in str(error) and "and 3 more" in str(error)


def test_llava_reader_can_leave_out_records_with_missing_images_and_say_how_many(tmp_path, image_root, caplog):
    records = [
        {"image": "coco/000.png", "conversations": [human("Q1"), gpt("A1")]},
        {"image": "coco/gone.png", "conversations": [human("Q2"), gpt("A2"), human("Q3"), gpt("A3")]},
        {"image": "coco/gone.png", "conversations": [human("Q4"), gpt("A4")]},
        {"conversations": [human("Q5"), gpt("A5")]},
    ]
    path = write_json(tmp_path / "l.json", records)
    triplets = read_llava_triplets(path, image_root, skip_missing_images=True)
    assert [t.instruction for t in triplets] == ["Q1"]
    assert skip_counts(caplog) == {"text-only": 1, "missing image": 2}


def test_llava_reader_strips_known_prompt_suffixes_on_request(tmp_path, image_root):
    question = "<image>\nWhat colour is the bus?\nAnswer the question using a single word or phrase."
    choice = "Which is red?\nA. bus\nB. car\nAnswer with the option's letter from the given choices directly."
    records = [{"image": "coco/000.png", "conversations": [human(question), gpt("Red"), human(choice), gpt("A")]}]
    path = write_json(tmp_path / "l.json", records)
    assert [t.instruction for t in read_llava_triplets(path, image_root, strip_prompt_suffixes=True)] == [
        "What colour is the bus?",
        "Which is red?\nA. bus\nB. car",
    ]
    assert read_llava_triplets(path, image_root)[0].instruction.endswith("single word or phrase.")
    assert strip_prompt_suffix("Describe the image.") == "Describe the image."


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


def test_caption_reader_stops_on_missing_images_or_leaves_them_out(tmp_path, image_root, caplog):
    path = tmp_path / "captions.jsonl"
    lines = [("coco/000.png", "a grey square"), ("coco/gone.png", "a lost square"), ("coco/001.png", "a red square")]
    path.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in lines), encoding="utf-8")
    with pytest.raises(MissingImagesError) as raised:
        read_caption_jsonl(path, image_root)
    assert raised.value.count == 1 and raised.value.paths == (image_root / "coco" / "gone.png",)
    records = read_caption_jsonl(path, image_root, skip_missing_images=True)
    assert [r.caption for r in records] == ["a grey square", "a red square"]
    assert skip_counts(caplog) == {"missing image": 1}
