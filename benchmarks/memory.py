"""Memory and CPU time of a server process tree, read from /proc (Linux only).

The memory figure is the tree's proportional set size (``Pss`` of /proc/<pid>/smaps_rollup,
summed): each page counts once, split between the processes that share it. For one process it is
its resident size less its share of shared libraries; for pre-forked workers, which share the
pages of the code they were forked with, summing ``VmRSS`` instead would count those pages once
per process. A sampler thread records the sum per benchmark phase (every 0.1 s), so the memory
taken by one phase (the 2 GB STOW) can be told apart from the peak of the whole run. ``VmHWM``
(each process's own peak resident size) is summed too, as an upper bound.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

MiB = 1 << 20


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/<tid>/children)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    return tree


def tree_rss(pid: int) -> int:
    """Current resident bytes of the tree."""
    return sum(_status_kib(p, "VmRSS") for p in process_tree(pid)) * 1024


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return _status_kib(pid, "VmRSS")


def tree_pss(pid: int) -> int:
    """Current proportional set size of the tree, in bytes."""
    return sum(_pss_kib(p) for p in process_tree(pid)) * 1024


def tree_peak(pid: int) -> int:
    """Sum of the processes' VmHWM (peak resident bytes) over the tree."""
    return sum(_status_kib(p, "VmHWM") for p in process_tree(pid)) * 1024


class RssSampler:
    """Samples the tree's memory (PSS) every ``interval`` seconds; keeps the maximum per phase."""

    def __init__(self, pid: int | None, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.hwm_seen = 0  # VmHWM sums are read too: a process that exits keeps nothing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> Self:
        if self.pid is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def set_phase(self, name: str) -> None:
        self.sample()
        self.phase = name

    def sample(self) -> None:
        if self.pid is None:
            return
        rss = tree_pss(self.pid)
        if rss:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
        self.hwm_seen = max(self.hwm_seen, tree_peak(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    @property
    def sampled_peak(self) -> int:
        return max(self.peaks.values(), default=0)


def drop_page_cache() -> bool:
    """Write dirty pages back, then drop the clean page cache; False where that is not allowed
    (it needs root). The pages freed are memory this machine holds: on a virtual machine whose
    hypervisor takes back idle guest memory, the next few seconds of writes land in pages it
    holds rather than in pages it must first supply again, whichever server writes them."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("1")
    except OSError:
        return False
    return True


def tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the trees rooted at ``pids``."""
    user, system = tree_cpu_split(pids)
    return user + system


def tree_cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by the trees rooted at ``pids``."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        for member in process_tree(pid):
            try:
                fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
                user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime (fields 14, 15)
            except (OSError, ValueError, IndexError):
                continue
    return user / ticks, system / ticks


_KERNEL_THREAD = 0x00200000  # PF_KTHREAD in the flags field of /proc/<pid>/stat


def foreign_cpu_seconds(database: str | None = None) -> tuple[float, float]:
    """(CPU seconds of other processes, CPU seconds PostgreSQL spent on ``database`` and in its
    background processes), including reaped children. This benchmark's processes are left out,
    and so are kernel threads (writeback, journal), which mostly work for the server under test;
    PostgreSQL backends serving other databases (and, without ``database``, all of PostgreSQL) count
    as other processes."""
    own = set(process_tree(os.getpid()))
    others = served = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            head, _, tail = (entry / "stat").read_text().rpartition(")")
            fields = tail.split()
            if int(fields[6]) & _KERNEL_THREAD:
                continue
            own_ticks, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        except (OSError, ValueError, IndexError):
            continue
        if head.endswith("(postgres"):
            # The postmaster's reaped children are every client's ended backends: count them as others.
            serves = database is not None and _serves(entry, database)
            served += own_ticks if serves else 0
            others += reaped + (0 if serves else own_ticks)
        else:
            others += own_ticks + reaped
    hz = os.sysconf("SC_CLK_TCK")
    return others / hz, served / hz


def _serves(entry: Path, database: str | None) -> bool:
    """A backend's title is 'postgres: <cluster>: <user> <database> <client> <state>'; background
    processes (checkpointer, walwriter, ...) have no client address."""
    try:
        title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    serving_client = "(" in title or "[local]" in title
    return not serving_client or (database is not None and f" {database} " in title)


class CpuMeter:
    """CPU seconds spent per phase by the server, its helpers (the S3 server), PostgreSQL, this
    client, and other processes (whose work disturbs the figures: it is reported)."""

    def __init__(self, server_pid: int | None, helper_pids: list[int], database: str | None = None) -> None:
        self.server = [server_pid] if server_pid else []
        self.helpers = helper_pids
        self.database = database
        self.phases: dict[str, dict[str, float]] = {}

    def _now(self) -> tuple[float, ...]:
        user, system = tree_cpu_split(self.server)
        return (time.perf_counter(), user + system, system, tree_cpu_seconds(self.helpers),
                time.process_time(), *foreign_cpu_seconds(self.database))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before = self._now()
        try:
            yield
        finally:
            after = self._now()
            wall, server, kernel, helpers, client, others, database = (a - b for a, b in zip(after, before))
            # The server's kernel share: on a VM it tells whether the hypervisor had taken back
            # the free memory a phase wrote into (see "Reading the figures" in the README).
            self.phases[name] = {"wall": wall, "server": server, "server_kernel": kernel, "helpers": helpers,
                                 "client": client, "database": database, "others": others}


def wait_until_quiet(*, timeout: float, cores: int, share: float = 0.1, settle: int = 3) -> bool:
    """Wait until other processes use less than ``share`` of the machine for ``settle`` seconds
    in a row; False if ``timeout`` ran out first."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        before = foreign_cpu_seconds()[0]
        time.sleep(1.0)
        calm = calm + 1 if foreign_cpu_seconds()[0] - before < share * cores else 0
        if calm >= settle:
            return True
    return False
