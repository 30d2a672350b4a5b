"""MLLP (HL7 Minimal Lower Layer Protocol, release 2): <VT> message <FS><CR> blocks over TCP,
and an asyncio server that runs in a thread of its own beside the HTTP and DICOM listeners.

The decoder never holds more than the maximum message size: a larger block is counted and
dropped as it arrives, keeping only its head (where MSH is, to answer it). Per MLLP release 2,
bytes between blocks are not HL7; whitespace there (a stray CR or LF after <FS><CR>) is
tolerated, anything else ends the connection, since its sender is not speaking MLLP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("minipacs.hl7")

START_BLOCK = b"\x0b"  # <VT>
END_BLOCK = b"\x1c"  # <FS>, followed by <CR>
CARRIAGE_RETURN = b"\r"
HEAD_BYTES = 64 * 1024  # what is kept of an oversized block or of junk, for the log and the answer
_WHITESPACE = b" \t\r\n"
_READ_BYTES = 256 * 1024


@dataclass(frozen=True)
class Message:
    """A complete block's content."""

    payload: bytes


@dataclass(frozen=True)
class Oversized:
    """A complete block larger than the maximum: its first HEAD_BYTES and its size."""

    head: bytes
    size: int


@dataclass(frozen=True)
class Broken:
    """Bytes that are no complete block: junk between blocks, or a block cut short (a new start
    block before the end block, the connection closed or silent in the middle of a block)."""

    data: bytes
    reason: str
    fatal: bool  # the connection cannot go on


Event = Message | Oversized | Broken


class MllpDecoder:
    """Turns received bytes into complete blocks; pure, so it is tested without sockets."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._block: bytearray | None = None  # inside a block: what was received so far
        self._size = 0  # the block's size, also past the maximum

    @property
    def in_block(self) -> bool:
        return self._block is not None

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        position = 0
        while position < len(data):
            if self._block is None:
                start = data.find(START_BLOCK, position)
                junk = data[position : len(data) if start < 0 else start]
                if junk.strip(_WHITESPACE):
                    events.append(Broken(junk[:HEAD_BYTES], "bytes outside an MLLP block (not <VT>...<FS><CR>)", True))
                    return events
                if start < 0:
                    return events
                self._block, self._size, position = bytearray(), 0, start + 1
                continue
            position = self._take(data, position, events)
        return events

    def _take(self, data: bytes, position: int, events: list[Event]) -> int:
        assert self._block is not None
        end, restart = data.find(END_BLOCK, position), data.find(START_BLOCK, position)
        stop = min(i for i in (end, restart, len(data)) if i >= 0)
        self._keep(data[position:stop])
        if stop == len(data):
            return stop
        if stop == restart:  # a new block began before this one ended: the sender gave it up
            events.append(Broken(bytes(self._block[:HEAD_BYTES]), "a new start block before the end block", False))
            self._block, self._size = bytearray(), 0
            return stop + 1
        events.append(self._complete())
        self._block, self._size = None, 0
        # <CR> after <FS> ends the block; a missing one is tolerated (the next block starts with <VT>).
        return stop + 2 if data[stop + 1 : stop + 2] == CARRIAGE_RETURN else stop + 1

    def _keep(self, chunk: bytes) -> None:
        assert self._block is not None
        self._size += len(chunk)
        if self._size <= self.max_message_bytes:
            self._block += chunk
        elif len(self._block) > HEAD_BYTES:  # just went past the maximum: only the head is kept
            del self._block[HEAD_BYTES:]
        elif len(self._block) < HEAD_BYTES:
            self._block += chunk[: HEAD_BYTES - len(self._block)]

    def _complete(self) -> Event:
        assert self._block is not None
        if self._size > self.max_message_bytes:
            return Oversized(bytes(self._block[:HEAD_BYTES]), self._size)
        return Message(bytes(self._block))

    def finish(self, reason: str) -> list[Event]:
        """The connection ended (or stalled): a block in progress is reported as cut short."""
        if self._block is None:
            return []
        block, self._block = self._block, None
        return [Broken(bytes(block[:HEAD_BYTES]), reason, True)]


def frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


class FrameHandler(Protocol):
    """What the server does with blocks; called in worker threads (it may block on the database)."""

    def message(self, payload: bytes, peer: str) -> bytes | None: ...  # the answer's payload

    def oversized(self, head: bytes, size: int, peer: str) -> bytes | None: ...

    def broken(self, data: bytes, reason: str, peer: str) -> None: ...


class MllpServer:
    """Listens on (host, port); each connection is read in order (an answer per block, as HL7
    original-mode acknowledgement expects) while connections are served side by side."""

    def __init__(
        self, handler: FrameHandler, host: str, port: int, *, max_message_bytes: int, workers: int = 8,
        block_timeout: float = 60.0, sock: socket.socket | None = None, max_connections: int = 64,
    ) -> None:
        self.handler = handler
        # Each connection may buffer up to a maximum-size message: their number bounds the memory.
        self.max_connections = max_connections
        self.sock = sock  # a listening socket to serve on (shared by worker processes) instead of binding
        self.host, self.requested_port = host, port
        self.max_message_bytes = max_message_bytes
        self.block_timeout = block_timeout  # silence inside a block longer than this ends the connection
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="hl7-intake")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    def start(self) -> None:
        """Returns once the socket listens; OSError (port taken) is raised here."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="hl7-mllp", daemon=True)
        self._thread.start()
        ready.result()
        log.info("HL7 MLLP listener on %s:%d", self.host, self.port)

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            if self.sock is not None:
                started = asyncio.start_server(self._serve, sock=self.sock)
            else:
                started = asyncio.start_server(self._serve, self.host, self.requested_port)
            self._server = loop.run_until_complete(started)
        except OSError as exc:
            ready.set_exception(exc)
            loop.close()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shut_down())
            loop.close()

    async def _shut_down(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    def stop(self) -> None:
        """Stops listening, ends the connections, and waits for messages being applied."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._executor.shutdown(wait=True)
        self._loop = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        if len(self._connections) >= self.max_connections:
            log.warning("HL7 connection from %s refused: %d connections already", peer, len(self._connections))
            writer.close()
            return
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # An ACK is one small write the sender waits on: never hold it back (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._converse(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("HL7 connection from %s ended abruptly", peer)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self._connections.discard(task)  # last: stop() waits for the tasks still in the set

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        decoder = MllpDecoder(self.max_message_bytes)
        while True:
            timeout = self.block_timeout if decoder.in_block else None
            try:
                data = await asyncio.wait_for(reader.read(_READ_BYTES), timeout)
            except TimeoutError:
                await self._handle(decoder.finish(f"no data for {self.block_timeout:g} s inside a block"), writer, peer)
                return
            if not data:
                await self._handle(decoder.finish("the connection closed before the end block"), writer, peer)
                return
            if not await self._handle(decoder.feed(data), writer, peer):
                return

    async def _handle(self, events: list[Event], writer: asyncio.StreamWriter, peer: str) -> bool:
        """Answer each event in order; False once the connection must end."""
        for event in events:
            answer = await self._call(event, peer)
            if answer is not None:
                writer.write(frame(answer))
                await writer.drain()
            if isinstance(event, Broken) and event.fatal:
                return False
        return True

    async def _call(self, event: Event, peer: str) -> bytes | None:
        call: Callable[[], bytes | None]
        if isinstance(event, Message):
            call = functools.partial(self.handler.message, event.payload, peer)
        elif isinstance(event, Oversized):
            call = functools.partial(self.handler.oversized, event.head, event.size, peer)
        else:
            call = functools.partial(self.handler.broken, event.data, event.reason, peer)
        assert self._loop is not None
        return await self._loop.run_in_executor(self._executor, call)


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "")
