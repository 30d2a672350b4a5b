"""benchmarks: the server CPU spent per phase, with its kernel share, and how the report shows it."""

from __future__ import annotations

import os
import time

from benchmarks.memory import CpuMeter
from benchmarks.report import _cpu_row
from benchmarks.runner import TargetResult
from benchmarks.servers import Server


def _measured(work: str) -> dict[str, float]:
    """The phase figures of ``work`` done by this very process, metered as a server would be."""
    meter = CpuMeter(os.getpid(), [])
    with meter.phase("work"):
        end = time.process_time() + 0.4  # 40 clock ticks: the figures come in ticks of 10 ms
        if work == "kernel":  # the kernel fills 1 MB per call: nearly all system time
            with open("/dev/zero", "rb", buffering=0) as zero:
                while time.process_time() < end:
                    zero.read(1 << 20)
        else:
            total = 0
            while time.process_time() < end:
                for i in range(10_000):
                    total += i * i
    return meter.phases["work"]


def test_a_phase_records_the_kernel_share_of_the_server_cpu() -> None:
    kernel = _measured("kernel")
    user = _measured("user")
    assert kernel["server"] > 0 and user["server"] > 0
    assert kernel["server_kernel"] > 0.6 * kernel["server"]
    assert user["server_kernel"] < 0.4 * user["server"]


def test_the_cpu_row_shows_the_kernel_share_per_unit() -> None:
    spent = {"wall": 2.0, "server": 4.0, "server_kernel": 1.5, "database": 0.5, "instances": 1000.0}
    mine = TargetResult(Server("minipacs", "http://127.0.0.1/m"), cpu={"stow_4": spent})
    older = TargetResult(Server("Orthanc", "http://127.0.0.1/o"), cpu={"stow_4": {"wall": 2.0, "server": 3.0, "instances": 1000.0}})
    row = _cpu_row("cpu", "stow_4", "instances", mine, older)
    assert row.mine == "4.00 (kernel 1.50) +0.50 PostgreSQL"
    assert row.theirs == "3.00"  # results saved before the kernel share was recorded
