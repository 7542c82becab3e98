"""Test-session setup: seeding, and Triton's CPU interpreter when no GPU is present.

TRITON_INTERPRET must be set before any module defining Triton kernels is imported, so it is set
here, at collection time, and only where no CUDA device exists (a GPU run tests the real kernels).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for modules of many tiny ops (OpenMP spin makes them far slower on a
    busy 2-core machine); restored afterwards. Use with pytest.mark.usefixtures("one_thread")."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
