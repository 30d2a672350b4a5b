"""Group commit: instances arriving at the same time share one index transaction.

Under concurrent ingest every request would otherwise wait for the database write lock and pay
its own commit sync. One committer thread takes everything queued, commits it as one batch
(each instance in its own savepoint, so one refusal does not undo the others) and hands each
caller its own results. A caller still returns only after its instances are committed.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from pacs.index.repository import CommitResult, IndexRepository, NewInstance

MAX_GROUP = 128  # instances per transaction: bounds the time others wait on one commit

Results = list[CommitResult | Exception]


class GroupCommitter:
    def __init__(self, index: IndexRepository, policy: str) -> None:
        self.index = index
        self.policy = policy
        self._queue: queue.SimpleQueue[tuple[list[NewInstance], Future[Results]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def commit(self, items: list[NewInstance]) -> Results:
        """Commit these instances (with whatever else is waiting); block until done."""
        future: Future[Results] = Future()
        self._ensure_running()
        self._queue.put((items, future))
        return future.result()

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(timeout=30)
                self._thread = None

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = self._gather(group)
            self._commit_group(group)
            if stop:
                return

    def _gather(self, group: list[tuple[list[NewInstance], Future[Results]]]) -> bool:
        """Add what is already waiting, up to MAX_GROUP instances; True if asked to stop."""
        size = len(group[0][0])
        while size < MAX_GROUP:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return False
            if entry is None:
                return True
            group.append(entry)
            size += len(entry[0])
        return False

    def _commit_group(self, group: list[tuple[list[NewInstance], Future[Results]]]) -> None:
        items = [item for entry, _ in group for item in entry]
        try:
            results = self.index.commit_instances(items, self.policy)
        except BaseException as exc:  # every waiting caller learns of it, none hangs
            for _, future in group:
                future.set_exception(exc)
            return
        start = 0
        for entry, future in group:
            future.set_result(results[start : start + len(entry)])
            start += len(entry)
