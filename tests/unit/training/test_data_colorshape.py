import numpy as np
import pytest
from PIL import Image

from focalserve_training.data import (
    COLOR_NAMES,
    COLORS,
    RELATIONS,
    SHAPES,
    ColorShapeCaptions,
    ColorShapeGenerator,
    ColorShapeInstructions,
    TwoObjectCaptions,
    caption,
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def nearest_colour(rgb: np.ndarray) -> str:
    return min(COLORS, key=lambda name: np.abs(np.asarray(COLORS[name]) - rgb).sum())


def test_same_seed_and_index_give_identical_pixels_in_any_order():
    a, b = ColorShapeGenerator(seed=3), ColorShapeGenerator(seed=3)
    forward = [pixels(a.sample(i).image) for i in range(5)]
    backward = [pixels(b.sample(i).image) for i in reversed(range(5))][::-1]
    for x, y in zip(forward, backward, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(pixels(a.sample_scene(7).image), pixels(b.sample_scene(7).image))


def test_different_seed_or_index_gives_different_images():
    base = pixels(ColorShapeGenerator(seed=0).sample(0).image)
    assert not np.array_equal(base, pixels(ColorShapeGenerator(seed=1).sample(0).image))
    assert not np.array_equal(base, pixels(ColorShapeGenerator(seed=0).sample(30).image))


def test_every_colour_shape_pair_appears_once_per_block():
    generator = ColorShapeGenerator()
    pairs = {(s.colour, s.shape) for s in map(generator.sample, range(30))}
    assert pairs == {(c, s) for c in COLOR_NAMES for s in SHAPES}


@pytest.mark.parametrize("image_size", [32, 64])
def test_object_pixels_have_the_named_colour_and_background_does_not(image_size):
    generator = ColorShapeGenerator(seed=5, image_size=image_size)
    for index in range(60):
        sample = generator.sample(index)
        image = pixels(sample.image)
        assert sample.image.mode == "RGB" and sample.image.size == (image_size, image_size)
        inside = np.median(image[sample.mask], axis=0)
        assert nearest_colour(inside) == sample.colour
        assert np.abs(inside - COLORS[sample.colour]).max() < 30
        outside = np.median(image[~sample.mask], axis=0)
        assert np.abs(outside - COLORS[sample.colour]).sum() > 90


def test_shapes_fit_inside_the_image_and_fill_their_box_as_expected():
    expected_fill = {"circle": 0.785, "square": 1.0, "triangle": 0.5, "diamond": 0.5}
    generator = ColorShapeGenerator(seed=2, image_size=64)
    for index in range(30):
        sample = generator.sample(index)
        x0, y0, x1, y1 = sample.box
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert not sample.mask[:y0].any() and not sample.mask[y1:].any()
        fill = sample.mask[y0:y1, x0:x1].mean()
        if sample.shape in expected_fill:
            assert fill == pytest.approx(expected_fill[sample.shape], abs=0.08)
        rows = sample.mask[y0:y1, x0:x1].sum(axis=1)
        if sample.shape == "triangle":  # apex up
            assert rows[1] < rows[-2]
        if sample.shape == "diamond":  # widest in the middle
            assert rows[len(rows) // 2] > max(rows[1], rows[-2])
        if sample.shape == "cross":  # corners empty, centre filled
            assert not sample.mask[y0, x0] and sample.mask[(y0 + y1) // 2, (x0 + x1) // 2]


def test_colour_is_not_the_mean_pixel():
    generator = ColorShapeGenerator(seed=0)
    hits = sum(
        nearest_colour(pixels(s.image).reshape(-1, 3).mean(0)) == s.colour
        for s in map(generator.sample, range(60))
    )
    assert hits < 40  # chance is 10 of 60; a trivial statistic must not solve the task


def test_captions():
    sample = ColorShapeGenerator().sample(0)
    assert caption(sample) == f"a {sample.colour} {sample.shape}"


def test_orange_takes_an():
    sample = ColorShapeGenerator().sample(COLOR_NAMES.index("orange"))
    assert caption(sample) == f"an orange {sample.shape}"


def test_scene_objects_differ_and_stand_in_the_captioned_relation():
    generator = ColorShapeGenerator(seed=1)
    seen = set()
    for index in range(80):
        scene = generator.sample_scene(index)
        first, second = scene.objects
        seen.add(scene.relation)
        assert (first.colour, first.shape) != (second.colour, second.shape)
        centre = {o: ((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for o in scene.objects}
        (fx, fy), (sx, sy) = centre[first], centre[second]
        assert {"left of": fx < sx, "right of": fx > sx, "above": fy < sy, "below": fy > sy}[
            scene.relation
        ]
        article = lambda c: "an" if c == "orange" else "a"  # noqa: E731
        assert caption(scene) == (
            f"{article(first.colour)} {first.colour} {first.shape} {scene.relation} "
            f"{article(second.colour)} {second.colour} {second.shape}"
        )
    assert seen == set(RELATIONS)


def test_caption_dataset_items():
    dataset = ColorShapeCaptions(12, seed=4)
    assert len(dataset) == 12
    item = dataset[7]
    assert isinstance(item["image"], Image.Image)
    assert item["caption"].endswith(SHAPES[item["label_shape"]])
    assert COLOR_NAMES[item["label_colour"]] in item["caption"]
    with pytest.raises(IndexError):
        dataset[12]


def test_instruction_dataset_groups_items_by_image():
    dataset = ColorShapeInstructions(3, seed=4, per_condition=2)
    assert len(dataset) == len(dataset.image_ids) == 3 * 4
    items = [dataset[i] for i in range(len(dataset))]
    assert [item["image_id"] for item in items] == dataset.image_ids
    first_image = items[:4]
    assert [item["condition"] for item in first_image] == ["colour", "colour", "shape", "shape"]
    for item in first_image:
        np.testing.assert_array_equal(pixels(item["image"]), pixels(first_image[0]["image"]))
    answers = {i["condition"]: i["answer"] for i in first_image}
    sample = ColorShapeGenerator(seed=4).sample(0)
    assert answers == {"colour": sample.colour, "shape": sample.shape}
    with pytest.raises(ValueError):
        ColorShapeInstructions(2, conditions=())


def test_an_images_run_of_items_is_rendered_once_and_any_order_gives_the_same_items(monkeypatch):
    in_order = list(ColorShapeInstructions(3, seed=4, per_condition=2))
    dataset = ColorShapeInstructions(3, seed=4, per_condition=2)
    rendered: list[int] = []
    render = dataset.generator.sample
    monkeypatch.setattr(dataset.generator, "sample", lambda index: rendered.append(index) or render(index))
    shuffled = [11, 3, 0, 1, 2, 7, 4]
    items = {i: dataset[i] for i in shuffled}
    assert rendered == [2, 0, 1]  # image ids: 11 -> 2, then 3, 0, 1, 2 -> 0, then 7, 4 -> 1
    for i in shuffled:
        np.testing.assert_array_equal(pixels(items[i]["image"]), pixels(in_order[i]["image"]))
        assert items[i]["answer"] == in_order[i]["answer"]


def test_two_object_dataset_items():
    dataset = TwoObjectCaptions(5, seed=2, image_size=48)
    item = dataset[4]
    assert item["image"].size == (48, 48)
    assert any(relation in item["caption"] for relation in RELATIONS)
