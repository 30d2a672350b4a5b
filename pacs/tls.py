"""TLS for the DICOM listener (PS3.15 B.1, the TLS secure transport connection profile) and
the start-up checks of the HTTPS files.

Certificates and keys are read when the server starts, so a wrong path or an encrypted key stops
`minipacs serve` with a message naming the setting, instead of failing every peer's handshake later.
"""

from __future__ import annotations

import socket
import ssl

from pacs.config import ConfigError, Settings


def dicom_server_context(settings: Settings) -> ssl.SSLContext | None:
    """The DICOM TLS listener's context, or None when no certificate is configured. With
    `dicom_tls_ca` set, peers must present a client certificate signed by that CA."""
    if not settings.dicom_tls_cert:
        return None
    context = _ListenerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195, which dcmtk's default profile follows
    _load_chain(context, "DICOM", settings.dicom_tls_cert, settings.dicom_tls_key)
    if settings.dicom_tls_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=settings.dicom_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"MINIPACS_DICOM_TLS_CA: cannot use {settings.dicom_tls_ca} as a PEM CA bundle: {_reason(exc)}"
            ) from None
    return context


def check_files(settings: Settings) -> None:
    """Raise ConfigError now if a configured certificate, key or CA bundle cannot be used."""
    if settings.http_tls_cert:
        # uvicorn loads the files again itself; this only reports mistakes before anything starts.
        _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "HTTP", settings.http_tls_cert, settings.http_tls_key)
    if settings.dicom_enabled:
        dicom_server_context(settings)


def finish_handshake(sock: socket.socket, timeout: float) -> None:
    """Complete the server handshake the listener's context deferred (see _ListenerContext),
    within `timeout` seconds; raises OSError (ssl.SSLError included) when it fails."""
    if not isinstance(sock, ssl.SSLSocket):
        return
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    sock.do_handshake()
    sock.settimeout(previous)


class _ListenerContext(ssl.SSLContext):
    """pynetdicom wraps each accepted socket in its single accept loop: a handshake there lets one
    peer that connects and says nothing stall the listener for everyone. Server-side sockets are
    wrapped without it; it runs in the connection's own thread (finish_handshake), or at the
    latest on the first read."""

    def wrap_socket(  # type: ignore[override]
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect and not server_side,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def _load_chain(context: ssl.SSLContext, kind: str, cert: str, key: str) -> None:
    for name, path in ((f"MINIPACS_{kind}_TLS_CERT", cert), (f"MINIPACS_{kind}_TLS_KEY", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path}: {_reason(exc)}") from None
    try:
        # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(f"MINIPACS_{kind}_TLS_KEY: {key} is encrypted; give the key without a passphrase") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"MINIPACS_{kind}_TLS_CERT / MINIPACS_{kind}_TLS_KEY: {cert} and {key} are not a PEM certificate "
            f"chain and its unencrypted private key ({_reason(exc)})"
        ) from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)
