"""One intra-op thread for these tests: tiny models run faster alone than contended."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids of the tiny models' byte vocabulary."""
    return torch.randint(0, 250, (batch, length), generator=torch.Generator().manual_seed(seed))
