"""Suite-wide settings: one torch thread per process.

The test problems are small; on a 2-core machine that other processes share, a second intra-op
thread costs far more than it gives (measured up to 10x slower under load). Child processes
(CLI runs, accelerate workers) inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402

from helpers_results import lung_result, truth_result  # noqa: E402


@pytest.fixture(scope="module")
def lung():
    """A small registered synthetic lung pair (built once per session, see helpers_results)."""
    return lung_result()


@pytest.fixture(scope="module")
def truth():
    """A result folder with a known analytic field (built once per session)."""
    return truth_result()
