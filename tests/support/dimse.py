"""DICOM networking helpers for tests: an in-process listener, dcmtk command-line tools,
a dcmtk `storescp` receiver, and pynetdicom associations.

dcmtk tools are always called by absolute path: pynetdicom installs console scripts with the
same names (`storescu`, `findscu`, ...) that come first on PATH.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification

from pacs.dimse.server import DicomServer
from pacs.services import Services
from tests.support.factories import to_bytes
from tests.support.processes import stop_process
from tests.support.s3server import free_port

DCMTK = Path("/usr/bin")
TOOL_TIMEOUT = 60.0
SOCKET_TIMEOUT = 15.0
CALLING_AE = "TESTSCU"


@contextmanager
def running_listener(services: Services, **changes: Any) -> Iterator[DicomServer]:
    """The archive's DICOM listener on a free port, in this process, over `services`. Unknown
    calling AEs are admitted (allowlist off) unless the changes say otherwise."""
    changes.setdefault("dicom_allowlist", False)
    settings = services.settings.replace(dicom_port=0, dicom_host="127.0.0.1", **changes)
    server = DicomServer(settings, services)
    server.start()  # returns once the socket listens: nothing to wait for
    try:
        yield server
    finally:
        # stop() waits for pynetdicom's accept loop to notice (its poll interval is 0.5 s);
        # nothing connects any more, so the test need not wait for it.
        threading.Thread(target=server.stop, daemon=True).start()


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = SOCKET_TIMEOUT) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with status {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.02)


def dcmtk(tool: str, *args: str | Path | int, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool (by absolute path) with TCP_NODELAY=1; output captured as text."""
    command = [str(DCMTK / tool), *(str(a) for a in args)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=timeout, errors="replace"
    )


def dcmtk_ok(tool: str, *args: str | Path | int, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Like dcmtk(), asserting a zero exit status (with the tool's output in the message)."""
    result = dcmtk(tool, *args, timeout=timeout)
    assert result.returncode == 0, f"{tool} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


class StoreSCP:
    """A dcmtk `storescp` receiving into a folder (C-MOVE destination)."""

    def __init__(self, folder: Path, ae_title: str, port: int, process: subprocess.Popen[bytes]) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = port
        self.process = process

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def datasets(self) -> dict[str, Dataset]:
        """Received objects by SOP Instance UID."""
        found: dict[str, Dataset] = {}
        for path in self.files():
            ds = pydicom.dcmread(path)
            found[str(ds.SOPInstanceUID)] = ds
        return found


@contextmanager
def running_storescp(folder: Path, ae_title: str = "RECEIVER", *, accept_all: bool = True) -> Iterator[StoreSCP]:
    """storescp on a free port writing to `folder`; `accept_all` (+xa) takes compressed syntaxes too."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    options = ["+xa"] if accept_all else []
    with open(folder.parent / f"storescp-{port}.log", "wb") as log:
        process = subprocess.Popen(
            [str(DCMTK / "storescp"), "-aet", ae_title, "-od", str(folder), *options, str(port)],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, process)
            yield StoreSCP(folder, ae_title, port, process)
        finally:
            stop_process(process, timeout=10)


def scu(contexts: Sequence[Any], *, ae_title: str = CALLING_AE) -> AE:
    """A pynetdicom AE proposing `contexts` (abstract syntax UIDs or (uid, [syntaxes]) pairs)."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for context in contexts:
        if isinstance(context, tuple):
            ae.add_requested_context(*context)
        else:
            ae.add_requested_context(context)
    return ae


@contextmanager
def association(
    port: int, contexts: Sequence[Any], *, ae_title: str = CALLING_AE, **kwargs: Any
) -> Iterator[Association]:
    """An established association with the listener; released (or aborted) on exit."""
    assoc = scu(contexts, ae_title=ae_title).associate("127.0.0.1", port, ae_title="MINIPACS", **kwargs)
    assert assoc.is_established, "association with the listener was not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def send_raw_c_store(assoc: Association, sop_class: str, sop_instance: str, dataset: Dataset) -> int:
    """C-STORE `dataset` as it is, whatever it lacks (pynetdicom's send_c_store checks the
    UIDs first); the command carries `sop_class` and `sop_instance`. Returns the status."""
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class)
    assert context.context_id is not None
    syntax = context.transfer_syntax[0]
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    encoded = encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    assert encoded is not None
    request.DataSet = io.BytesIO(encoded)
    # As send_c_store does: hold the association's reactor so the response comes to us.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None and response.Status is not None, "no C-STORE response"
    return int(response.Status)


def echo_status(port: int, *, ae_title: str = CALLING_AE) -> int | None:
    """Status of one C-ECHO over a fresh association; None when the association is refused."""
    assoc = scu([Verification], ae_title=ae_title).associate("127.0.0.1", port, ae_title="MINIPACS")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def write_files(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Each data set as a Part 10 file in `folder` (named by SOP Instance UID)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_bytes(ds))
        paths.append(path)
    return paths




def temp_files(services: Services) -> list[Path]:
    """Files left in the archive's own temp folder."""
    return [p for p in (services.settings.data_dir / "tmp").rglob("*") if p.is_file()]


def identifier(level: str | None = None, **keys: Any) -> Dataset:
    with warnings.catch_warnings():
        # Matching values need not be valid values of their VR ("C*" is no CS value, "2024" no
        # date); pydicom warns about them, and some tests send invalid ones on purpose.
        warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
        ds = Dataset()
        if level is not None:
            ds.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
    return ds
