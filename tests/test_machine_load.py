"""The test-timeout scale factor (tests/machine_load.py)."""

import os

import pytest

import machine_load


@pytest.mark.parametrize("cpus, load, expected", [(4, 0.5, 1.0), (2, 0.5, 2.0), (2, 6.0, 6.0), (8, 16.0, 2.0),
                                                  (1, 40.0, 10.0)])
def test_scale_grows_with_fewer_cpus_and_more_load(monkeypatch, cpus, load, expected):
    monkeypatch.delenv("VLTR_TEST_TIME_SCALE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert machine_load.time_scale() == pytest.approx(expected)
    assert machine_load.scaled(30) == pytest.approx(30 * expected)


def test_the_environment_overrides(monkeypatch):
    monkeypatch.setenv("VLTR_TEST_TIME_SCALE", "3")
    assert machine_load.time_scale() == 3.0
    monkeypatch.setenv("VLTR_TEST_TIME_SCALE", "0.1")  # never shorter than the plain timeouts
    assert machine_load.time_scale() == 1.0


def test_pytest_timeouts_are_scaled(request):
    """The ini default (600 s) was scaled at collection: at least by the CPU part of the factor."""
    if os.environ.get("VLTR_TEST_TIME_SCALE"):
        at_least = 600 * max(1.0, float(os.environ["VLTR_TEST_TIME_SCALE"]))
    else:
        at_least = 600 * max(1.0, machine_load.REFERENCE_CPUS / len(os.sched_getaffinity(0)))
    assert request.node.get_closest_marker("timeout").args[0] >= at_least
