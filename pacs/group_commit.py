"""Group commit: instances arriving at the same time share one index transaction.

Under concurrent ingest every request would otherwise wait for the database write lock and pay
its own commit sync. Callers queue their instances; whoever finds no commit in flight leads:
it takes everything queued, commits it as one batch (each instance in its own savepoint, so one
refusal does not undo the others) and hands each caller its own results. The others wait for
the leader, which is one of them, to finish, then either have their results or lead the next
group. An instance stored alone is committed by the thread that stored it: no hand-over to
another thread and back, which costs a cross-core wake-up each way.
"""

from __future__ import annotations

import threading
from collections import deque

from pacs.index.repository import CommitResult, IndexRepository, NewInstance
from pacs.index.writer_lock import PendingSync

MAX_GROUP = 128  # instances per transaction: bounds the time others wait on one commit

Results = list[CommitResult | Exception]


class _Waiting:
    __slots__ = ("done", "error", "items", "results", "taken")

    def __init__(self, items: list[NewInstance]) -> None:
        self.items = items
        self.results: Results = []
        self.error: BaseException | None = None
        self.taken = False  # in a group being committed
        self.done = False


class GroupCommitter:
    def __init__(self, index: IndexRepository, policy: str) -> None:
        self.index = index
        self.policy = policy
        self._turn = threading.Condition(threading.Lock())
        self._waiting: deque[_Waiting] = deque()
        self._committing = False

    def commit(self, items: list[NewInstance]) -> Results:
        """Commit these instances (with whatever else is waiting); return once they are."""
        mine = _Waiting(items)
        with self._turn:
            self._waiting.append(mine)
        while True:
            with self._turn:
                while (self._committing or mine.taken) and not mine.done:
                    self._turn.wait()
                if mine.done:
                    break
                self._committing = True
                group = self._take()
            self._commit_group(group)
        if mine.error is not None:
            raise mine.error
        return mine.results

    def _take(self) -> list[_Waiting]:
        """The oldest waiting callers, up to MAX_GROUP instances (at least one caller)."""
        group = [self._waiting.popleft()]
        size = len(group[0].items)
        while self._waiting and size + len(self._waiting[0].items) <= MAX_GROUP:
            size += len(self._waiting[0].items)
            group.append(self._waiting.popleft())
        for entry in group:
            entry.taken = True
        return group

    def _commit_group(self, group: list[_Waiting]) -> None:
        items = [item for entry in group for item in entry.items]
        results: Results = []
        error: BaseException | None = None
        pending: PendingSync | None = None
        try:
            with self.index.syncing_later() as pending:
                results = self.index.commit_instances(items, self.policy)
        except BaseException as exc:  # noqa: BLE001 - every caller in the group learns of it, none hangs
            error = exc
        with self._turn:
            self._committing = False  # the next group commits while this one is synced
            self._turn.notify_all()
        if pending is not None:
            try:
                pending.wait()
            except BaseException as exc:  # noqa: BLE001 - as above
                error = exc
        with self._turn:
            start = 0
            for entry in group:
                entry.error = error
                entry.results = results[start : start + len(entry.items)]
                start += len(entry.items)
                entry.done = True
            self._turn.notify_all()
