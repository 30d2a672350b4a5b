"""The thread pool that runs blocking work (database, files, object storage) for the event loop.

Starlette's ``run_in_threadpool`` goes through anyio (capacity limiter, cancel scopes, context
lookups) and costs several times a plain executor hand-off; ingest and every synchronous route
make one or more per request, so they use this one instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

MAX_THREADS = 40  # as anyio's default limiter: enough for many slow requests at once

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def executor() -> ThreadPoolExecutor:
    """Created on first use (never at import: a forked worker must not inherit dead threads)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="blocking")
        return _executor


async def run_blocking(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``func`` in the pool and await its result; context variables go along, as with anyio."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor(), call)
