from collections import Counter

import pytest

from focalserve_training.data import ColorShapeInstructions, GroupedInstructionBatchSampler


def ids_per_image(n_images: int, per_image: int) -> list[int]:
    return [image for image in range(n_images) for _ in range(per_image)]


def test_each_batch_holds_k_items_of_each_of_several_images():
    image_ids = ids_per_image(20, 8)
    sampler = GroupedInstructionBatchSampler(image_ids, batch_size=16, instructions_per_image=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 10
    for batch in batches:
        assert len(batch) == 16
        assert sorted(Counter(image_ids[i] for i in batch).values()) == [4, 4, 4, 4]
    assert sorted(i for batch in batches for i in batch) == list(range(160))


def test_works_with_the_colorshape_dataset():
    dataset = ColorShapeInstructions(6)
    sampler = GroupedInstructionBatchSampler(dataset.image_ids, 8, 4, seed=1)
    for batch in sampler:
        assert set(Counter(dataset.image_ids[i] for i in batch).values()) == {4}


def test_order_is_deterministic_per_epoch_and_changes_between_epochs():
    image_ids = ids_per_image(30, 4)
    a = GroupedInstructionBatchSampler(image_ids, 8, 2, seed=7)
    b = GroupedInstructionBatchSampler(image_ids, 8, 2, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert list(a) == list(a)
    b.set_epoch(4)
    assert list(a) != list(b)
    other_seed = GroupedInstructionBatchSampler(image_ids, 8, 2, seed=8)
    other_seed.set_epoch(3)
    assert list(a) != list(other_seed)


@pytest.mark.parametrize("drop_last", [True, False])
def test_len_matches_iteration_with_uneven_groups(drop_last):
    image_ids = ["a"] * 5 + ["b"] * 1 + ["c"] * 3 + ["d"] * 4 + ["e"] * 2  # 15 items
    sampler = GroupedInstructionBatchSampler(image_ids, 4, 2, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (3 if drop_last else 4)
    flat = [i for batch in batches for i in batch]
    assert len(flat) == len(set(flat)) == (12 if drop_last else 15)
    assert all(len(batch) == 4 for batch in batches[:3])


def test_distributed_ranks_get_disjoint_equal_shares():
    image_ids = ids_per_image(25, 4)  # 100 items, 12 batches of 8 -> 4 per rank of 3
    samplers = [
        GroupedInstructionBatchSampler(image_ids, 8, 4, seed=2, num_replicas=3, rank=r)
        for r in range(3)
    ]
    for sampler in samplers:
        sampler.set_epoch(1)
    shares = [list(s) for s in samplers]
    assert [len(share) for share in shares] == [len(s) for s in samplers] == [4, 4, 4]
    flat = [i for share in shares for batch in share for i in batch]
    assert len(flat) == len(set(flat)) == 96
    single = GroupedInstructionBatchSampler(image_ids, 8, 4, seed=2)
    single.set_epoch(1)
    assert sorted(map(tuple, list(single)[:12])) == sorted(
        tuple(b) for share in shares for b in share
    )


def test_distributed_without_drop_last_pads_ranks_to_equal_length():
    image_ids = ids_per_image(5, 2)  # 10 items -> 3 batches of 4 (last one short)
    samplers = [
        GroupedInstructionBatchSampler(image_ids, 4, 2, drop_last=False, num_replicas=2, rank=r)
        for r in range(2)
    ]
    shares = [list(sampler) for sampler in samplers]
    assert [len(share) for share in shares] == [2, 2]
    covered = {i for share in shares for batch in share for i in batch}
    assert covered == set(range(10))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 6, "instructions_per_image": 4}, "multiple"),
        ({"batch_size": 8, "instructions_per_image": 0}, "multiple"),
        ({"batch_size": 8, "instructions_per_image": 4, "num_replicas": 2, "rank": 2}, "rank"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupedInstructionBatchSampler([0, 0, 1, 1], **kwargs)
