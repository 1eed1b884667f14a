"""Fixtures shared by unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import faiss
import pytest
import torch


def _one_thread(get: Callable[[], int], set_: Callable[[int], None]) -> Iterator[None]:
    """Run with one thread, then give back what was there."""
    threads = get()
    set_(1)
    yield
    set_(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they spin."""
    yield from _one_thread(torch.get_num_threads, torch.set_num_threads)


@pytest.fixture(scope="module")
def one_faiss_thread():
    """OpenMP spin-waits badly when the two CI cores are shared with another job."""
    yield from _one_thread(faiss.omp_get_max_threads, faiss.omp_set_num_threads)
