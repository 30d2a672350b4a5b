"""Group commit hands every caller exactly its own results, and never leaves one waiting."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest

from pacs.errors import DatabaseUnavailable
from pacs.group_commit import GroupCommitter


class RecordingIndex:
    """Stands in for IndexRepository.commit_instances: echoes items, records batch sizes."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.gate = gate
        self.fail = fail

    def syncing_later(self) -> Any:
        return contextlib.nullcontext(None)  # as on PostgreSQL: a commit is durable when it returns

    def commit_instances(self, items: list[Any], policy: str) -> list[Any]:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(items))
        if self.fail:
            raise DatabaseUnavailable("database unavailable: test")
        return [f"{policy}:{item}" for item in items]


def test_each_caller_gets_its_own_results_in_order() -> None:
    committer = GroupCommitter(RecordingIndex(), "keep")  # type: ignore[arg-type]
    assert committer.commit(["a", "b"]) == ["keep:a", "keep:b"]  # type: ignore[list-item]
    assert committer.commit(["c"]) == ["keep:c"]  # type: ignore[list-item]


def test_concurrent_callers_share_transactions() -> None:
    gate = threading.Event()
    index = RecordingIndex(gate)
    committer = GroupCommitter(index, "keep")  # type: ignore[arg-type]
    answers: dict[int, list[Any]] = {}

    def call(n: int) -> None:
        answers[n] = committer.commit([f"{n}-1", f"{n}-2"])  # type: ignore[list-item]

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    while sum(len(b) for b in index.batches) == 0 and len(committer._waiting) < 7:
        threading.Event().wait(0.01)  # let the others queue behind the first, held, commit
    gate.set()
    for thread in threads:
        thread.join(10)
    assert answers == {n: [f"keep:{n}-1", f"keep:{n}-2"] for n in range(8)}
    assert len(index.batches) < 8  # at least some callers were committed together
    assert sorted(i for b in index.batches for i in b) == sorted(f"{n}-{k}" for n in range(8) for k in (1, 2))


def test_a_failed_group_fails_every_caller_in_it() -> None:
    committer = GroupCommitter(RecordingIndex(fail=True), "keep")  # type: ignore[arg-type]
    with pytest.raises(DatabaseUnavailable):
        committer.commit(["a"])  # type: ignore[list-item]
    with pytest.raises(DatabaseUnavailable):
        committer.commit(["b"])  # type: ignore[list-item]


def test_a_lone_commit_runs_in_the_calling_thread() -> None:
    """No hand-over to another thread and back for an instance stored alone."""
    seen: list[threading.Thread] = []

    class Watching(RecordingIndex):
        def commit_instances(self, items: list[Any], policy: str) -> list[Any]:
            seen.append(threading.current_thread())
            return super().commit_instances(items, policy)

    committer = GroupCommitter(Watching(), "keep")  # type: ignore[arg-type]
    assert committer.commit(["a"]) == ["keep:a"]  # type: ignore[list-item]
    worker = threading.Thread(target=committer.commit, args=(["b"],))
    worker.start()
    worker.join(5)
    assert seen == [threading.current_thread(), worker]
    assert committer.commit(["c"]) == ["keep:c"]  # type: ignore[list-item]


def test_a_caller_behind_a_full_group_is_committed_in_the_next() -> None:
    gate = threading.Event()
    index = RecordingIndex(gate)
    committer = GroupCommitter(index, "keep")  # type: ignore[arg-type]
    answers: dict[str, list[Any]] = {}

    def call(name: str, size: int) -> None:
        answers[name] = committer.commit([f"{name}{k}" for k in range(size)])  # type: ignore[list-item]

    first = threading.Thread(target=call, args=("a", 1))
    first.start()
    while not committer._committing:
        threading.Event().wait(0.01)
    others = [threading.Thread(target=call, args=(name, 100)) for name in ("b", "c")]
    for queued, thread in enumerate(others, start=1):
        thread.start()
        while len(committer._waiting) < queued:  # b queues before c
            threading.Event().wait(0.01)
    gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert [len(b) for b in index.batches] == [1, 100, 100]  # 200 would pass MAX_GROUP (128)
    assert answers["c"] == [f"keep:c{k}" for k in range(100)]


class HeldSync:
    """A PendingSync whose wait lasts until the test lets it end."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.release = threading.Event()

    def wait(self) -> None:
        self.waiting.set()
        assert self.release.wait(10)


def test_the_next_group_commits_while_the_last_is_synced_and_callers_hear_only_after_their_sync() -> None:
    syncs: list[HeldSync] = []

    class SyncedLater(RecordingIndex):
        def syncing_later(self) -> Any:
            syncs.append(HeldSync())
            return contextlib.nullcontext(syncs[-1])

    index = SyncedLater()
    committer = GroupCommitter(index, "keep")  # type: ignore[arg-type]
    answers: dict[str, list[Any]] = {}
    first = threading.Thread(target=lambda: answers.update(a=committer.commit(["a"])))  # type: ignore[list-item]
    first.start()
    while not syncs or not syncs[0].waiting.is_set():
        threading.Event().wait(0.005)
    second = threading.Thread(target=lambda: answers.update(b=committer.commit(["b"])))  # type: ignore[list-item]
    second.start()
    while len(syncs) < 2 or not syncs[1].waiting.is_set():  # committed while the first sync runs
        threading.Event().wait(0.005)
    assert index.batches == [["a"], ["b"]]
    assert answers == {}  # neither hears of its commit before its sync has ended
    syncs[1].release.set()
    second.join(5)
    assert answers == {"b": ["keep:b"]}
    syncs[0].release.set()
    first.join(5)
    assert answers == {"a": ["keep:a"], "b": ["keep:b"]}
