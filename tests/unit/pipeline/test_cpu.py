"""The CPU accounting of the benchmarks: a process's own time, a tree's reaped children, a process that is gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crmflow.pipeline.cpu import CpuMeter, cpu_seconds

pytestmark = pytest.mark.unit

BURN = "x = 0\nfor i in range(3_000_000):\n    x += i\n"


def test_a_process_that_worked_used_cores_and_the_total_adds_them_up() -> None:
    meter = CpuMeter({"me": (os.getpid(), False)})
    meter.start()
    exec(BURN)  # noqa: S102 - a fixed CPU burn
    cores = meter.cores()
    assert cores["me"] > 0 and cores["total"] == cores["me"]


def test_a_tree_counts_the_children_it_reaped() -> None:
    alone, tree = cpu_seconds(os.getpid()), cpu_seconds(os.getpid(), tree=True)
    assert alone is not None and tree is not None
    subprocess.run([sys.executable, "-c", BURN], check=True)  # started, worked and reaped in between
    alone_after, tree_after = cpu_seconds(os.getpid()), cpu_seconds(os.getpid(), tree=True)
    assert alone_after is not None and tree_after is not None
    assert tree_after - tree > alone_after - alone + 0.05  # the child's time is in the tree's only


def test_a_process_that_is_gone_is_left_out() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    meter = CpuMeter({"child": (child.pid, False), "me": (os.getpid(), False)})
    meter.start()
    child.wait()
    assert cpu_seconds(child.pid) is None
    assert "child" not in meter.cores()
