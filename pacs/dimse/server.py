"""build_ae(settings, services) and the DICOM listener's lifecycle; the handler-binding table."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import socket
import time
from typing import Any

from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts, StoragePresentationContexts
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
    register_uid,
    uid_to_service_class,
)
from pynetdicom.transport import ThreadedAssociationServer

from pacs import tls
from pacs.config import Settings
from pacs.dimse import handlers, preencoded, tuning, worklist
from pacs.dimse.listening import serve_on
from pacs.services import Services

log = logging.getLogger("pacs.dimse")
_ALLOWLIST_REFRESH_SECONDS = 5.0


# As an acceptor pynetdicom takes the first of these the peer proposed. Explicit VR Little Endian
# first: images are kept with their VRs as most modalities write them, and C-GET sub-operations
# go out as stored instead of being re-encoded (ALL_TRANSFER_SYNTAXES puts Implicit first).
_STORAGE_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian,
    *[ts for ts in ALL_TRANSFER_SYNTAXES if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)],
    ExplicitVRBigEndian,
]


def build_ae(settings: Settings) -> AE:
    # Received data sets go to a temp file instead of memory; ingest takes the file as is.
    _config.STORE_RECV_CHUNKED_DATASET = True
    tuning.apply()
    preencoded.apply()  # worklist answers come encoded already
    # Query identifiers carry patient names and IDs: they stay out of the log. Our own handlers
    # log each association and operation once; pynetdicom's per-message lines are noise.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # pynetdicom's standard handlers format every PDU and message for its own log, which we
    # keep at WARNING: formatting them anyway costs more than the rest of small exchanges.
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.dicom_max_associations
    ae.maximum_pdu_size = settings.dicom_max_pdu
    ae.acse_timeout = settings.dicom_acse_timeout
    ae.dimse_timeout = settings.dicom_dimse_timeout
    ae.network_timeout = settings.dicom_network_timeout
    ae.add_supported_context(Verification)
    # Every storage SOP class pynetdicom knows. StoragePresentationContexts is the 120 an SCU can
    # propose in one association (PS3.8 9.3.2.2 allows 128): it leaves out breast projection
    # X-ray, parametric maps, newer SR and RT classes, while AllStoragePresentationContexts leaves
    # out retired ones old modalities still send (retired US and NM). An acceptor takes both.
    storage = dict.fromkeys(c.abstract_syntax for c in [*StoragePresentationContexts, *AllStoragePresentationContexts])
    for abstract_syntax in storage:
        assert abstract_syntax is not None
        if uid_to_service_class(abstract_syntax) is not StorageServiceClass:
            # Retired classes: pynetdicom negotiates them but, knowing no service for them,
            # aborts the association on the first C-STORE unless they are registered.
            register_uid(abstract_syntax, UID(abstract_syntax).keyword, StorageServiceClass)
        # scu_role for C-GET: the peer proposes storage contexts for us to send on.
        ae.add_supported_context(abstract_syntax, _STORAGE_SYNTAXES, scu_role=True, scp_role=True)
    for model in (
        PatientRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
        ModalityWorklistInformationFind,  # PS3.4 K
        ModalityPerformedProcedureStep,  # PS3.4 F.7, N-CREATE / N-SET
    ):
        ae.add_supported_context(model)
    return ae


def handler_table(services: Services, allowlist: AllowList | None) -> list[Any]:
    """The one place DIMSE events are bound to handlers."""
    table: list[Any] = [
        (evt.EVT_CONN_OPEN, handlers.set_nodelay),
        (evt.EVT_CONN_CLOSE, handlers.discard_partial_store),
        (evt.EVT_CONN_CLOSE, handlers.end_silent_connection),
        (evt.EVT_ACCEPTED, handlers.log_association),
        (evt.EVT_REJECTED, handlers.log_association),
        (evt.EVT_RELEASED, handlers.log_association),
        (evt.EVT_ABORTED, handlers.log_association),
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, [services]),
        (evt.EVT_C_FIND, worklist.handle_find, [services]),  # the worklist's, else handlers.handle_find
        (evt.EVT_C_MOVE, handlers.handle_move, [services]),
        (evt.EVT_C_GET, handlers.handle_get, [services]),
        (evt.EVT_N_CREATE, worklist.handle_mpps_create, [services]),
        (evt.EVT_N_SET, worklist.handle_mpps_set, [services]),
    ]
    if allowlist is not None:
        table.insert(1, (evt.EVT_CONN_OPEN, allowlist.refresh))
    return table


class AllowList:
    """Calling AE titles allowed to associate: the known remote AEs, re-read every few seconds
    so `minipacs ae add` takes effect without a restart."""

    def __init__(self, ae: AE, services: Services) -> None:
        self.ae = ae
        self.services = services
        self.loaded_at = 0.0
        self.refresh(None)

    def refresh(self, event: Any) -> None:
        now = time.monotonic()
        if now - self.loaded_at < _ALLOWLIST_REFRESH_SECONDS and event is not None:
            return
        titles = [ae.ae_title for ae in self.services.remote_aes.all()]
        # An empty list would let everyone in. pynetdicom only takes valid AE titles, so no title
        # is unsendable; one drawn at random per refresh is unguessable instead.
        self.ae.require_calling_aet = titles or [secrets.token_hex(8).upper()]
        self.loaded_at = now


class DicomServer:
    """The DICOM listener running in background threads of the serving process."""

    def __init__(
        self, settings: Settings, services: Services,
        listeners: tuple[socket.socket | None, socket.socket | None] | None = None,
    ) -> None:
        self.settings = settings
        # Listening sockets opened by the caller (plain, TLS); None: bind the configured ports.
        self.listeners = listeners
        # Handlers read the listener's settings (allowlist, AE title) through the services they get.
        self.services = services if services.settings == settings else dataclasses.replace(services, settings=settings)
        self.ae = build_ae(settings)
        # With authentication switched off, DICOM is open too (the operator chose it).
        checked = settings.dicom_allowlist and settings.auth != "off"
        self.allowlist = AllowList(self.ae, services) if checked else None
        # Read now: an unusable certificate stops start-up (ConfigError) rather than every TLS peer.
        self.tls_context = tls.dicom_server_context(settings)
        self.server: ThreadedAssociationServer | None = None
        self.tls_server: ThreadedAssociationServer | None = None

    def start(self) -> None:
        table = handler_table(self.services, self.allowlist)
        if self.listeners is not None:
            self._start_on(*self.listeners, table)
            return
        address = (self.settings.dicom_host, self.settings.dicom_port)
        server = self.ae.start_server(address, block=False, evt_handlers=table)
        assert server is not None
        self.server = server
        log.info("DICOM listener %s on %s:%d", self.settings.ae_title, *server.server_address[:2])
        if self.tls_context is None:
            return
        tls_address = (self.settings.dicom_host, self.settings.dicom_tls_port)
        try:
            tls_server = self.ae.start_server(
                tls_address,
                block=False,
                evt_handlers=[(evt.EVT_CONN_OPEN, self._handshake), *table],
                ssl_context=self.tls_context,
            )
        except OSError:
            self.stop()  # e.g. the TLS port is taken: no half-started listener
            raise
        assert tls_server is not None
        self.tls_server = tls_server
        log.info("DICOM TLS listener %s on %s:%d", self.settings.ae_title, *tls_server.server_address[:2])

    def _start_on(self, plain: socket.socket | None, secure: socket.socket | None, table: list[Any]) -> None:
        shared = self.settings.worker_count > 1  # the other workers accept from the same sockets
        if plain is not None:
            self.server = serve_on(self.ae, plain, evt_handlers=table, shared=shared)
        if secure is not None and self.tls_context is not None:
            self.tls_server = serve_on(
                self.ae, secure, evt_handlers=[(evt.EVT_CONN_OPEN, self._handshake), *table],
                ssl_context=self.tls_context, shared=shared,
            )

    def _handshake(self, event: Any) -> None:
        """The TLS handshake, in the connection's own thread (pacs.tls defers it from the accept loop)."""
        connection = event.assoc.dul.socket
        sock = connection.socket
        try:
            tls.finish_handshake(sock, self.settings.dicom_acse_timeout)
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            log.warning("DICOM TLS handshake with %s:%d failed: %s", *event.address[:2], reason)
            connection.close()  # the association ends as if the peer had dropped the connection
            sock.close()  # pynetdicom skips this when shutdown() fails, as it does on a failed handshake

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's port; None when no DICOM certificate is configured."""
        return None if self.tls_server is None else int(self.tls_server.server_address[1])

    def stop(self) -> None:
        for server in (self.server, self.tls_server):
            if server is not None:
                server.shutdown()
        self.server = self.tls_server = None
