"""The fault tests run with one torch thread per process (OMP_NUM_THREADS=1 unless already set).

Each test runs the pipeline in child processes (and some stages in the test process) while the test
process watches them. With two torch threads each on a 2-core machine under load, OpenMP threads spin
waiting for a core: a 40-epoch training run took 23 s of epoch time at a load of 6, against 1.5 s with
one thread. The results under test (resumed runs equal to uninterrupted ones, refusals, recorded
failures) are compared between runs made with the same setting.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread_per_process():
    """OMP_NUM_THREADS=1 for the module (children inherit it; the product's torch_threads() caps by it),
    and the test process's torch threads restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        if "OMP_NUM_THREADS" not in os.environ:
            patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)
