"""Test timeouts that scale with the machine: fewer CPUs or a higher load average give more time.

Timeouts in tests catch hangs, not slowness: a loaded 2-core machine must not turn a slow run into
a failure. ``VLTR_TEST_TIME_SCALE`` overrides the factor (e.g. ``3`` on a very slow runner).
"""

from __future__ import annotations

import os

REFERENCE_CPUS = 4  # a machine with this many free CPUs gets the plain timeouts
MAX_SCALE = 10.0


def time_scale() -> float:
    """The factor applied to every test timeout, from the CPUs this process may use and the load."""
    override = os.environ.get("VLTR_TEST_TIME_SCALE")
    if override:
        return max(1.0, float(override))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    few_cpus = max(1.0, REFERENCE_CPUS / cpus)
    busy = max(1.0, load / cpus)
    return min(MAX_SCALE, few_cpus * busy)


def scaled(seconds: float) -> float:
    """``seconds`` times the current time_scale()."""
    return seconds * time_scale()
