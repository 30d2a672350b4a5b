"""Settings: the only place that reads the environment or the configuration file.

Precedence, lowest first: built-in defaults, the TOML file (``MINIPACS_CONFIG`` or ``--config``),
environment variables. Every key of the TOML file is the environment name without the
``MINIPACS_`` prefix, in lower case (``http_port = 8042``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DUPLICATE_POLICIES = ("keep", "overwrite", "reject")
AUTO_WORKERS_MAX = 4  # each worker holds its own caches and pools (~100 MB)
COMPRESSION_NAMES = {
    "jpeg2000-lossless": "1.2.840.10008.1.2.4.90",
    "jpegls-lossless": "1.2.840.10008.1.2.4.80",
    "rle": "1.2.840.10008.1.2.5",
}


class ConfigError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./minipacs-data")
    database_url: str = ""  # empty: SQLite file under data_dir
    storage_url: str = ""  # empty: folder under data_dir
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8042
    http_workers: int = 0  # worker processes; 0 (or "auto"): one per CPU core, at most AUTO_WORKERS_MAX
    public_url: str = ""  # e.g. https://pacs.example.org when behind a reverse proxy
    dicom_port: int = 11112
    ae_title: str = "MINIPACS"
    dicom_host: str = "127.0.0.1"
    dicom_enabled: bool = True
    dicom_max_associations: int = 25
    dicom_max_pdu: int = 262144  # bytes; larger PDUs mean fewer fragments per instance
    dicom_acse_timeout: int = 30  # seconds
    dicom_dimse_timeout: int = 60
    dicom_network_timeout: int = 120
    # When on, only calling AE titles of known remote AEs may associate; when off (or with
    # MINIPACS_AUTH=off), unknown ones may store and query (known ones keep their access).
    dicom_allowlist: bool = True
    remote_aes: str = ""  # NAME@HOST:PORT,... (also `minipacs ae add`)
    dicom_tls_port: int = 2762  # the DICOM TLS listener, when a certificate is configured
    dicom_tls_cert: str = ""  # PEM certificate chain; setting it (and the key) starts the TLS listener
    dicom_tls_key: str = ""
    dicom_tls_ca: str = ""  # PEM CA bundle: when set, TLS peers must present a certificate it signed
    # IANA time zone of the dates and times exchanged with modalities (worklist schedules, MPPS
    # start and end: DICOM DA/TM values are local times); empty: the machine's own.
    dicom_timezone: str = ""
    # Linking a study to an order (at ingest or by staff) also rewrites the study's patient
    # attributes (index and stored metadata) from the order. Off: images keep what the modality sent.
    reconcile_patient: bool = False
    # HL7 v2 order intake over MLLP (worklist.hl7). MINIPACS_HL7_PORT=off disables the listener.
    hl7_enabled: bool = True
    hl7_port: int = 2575
    hl7_host: str = ""  # empty: the HTTP host
    hl7_max_message_bytes: int = 16 * 1024 * 1024  # larger frames are answered AE, never buffered
    http_tls_cert: str = ""  # PEM certificate chain: HTTPS instead of HTTP
    http_tls_key: str = ""
    auth: str = "on"
    session_hours: int = 12  # browser sessions end after this long without use
    token_days: int = 365  # default lifetime of a new API token
    login_max_failures: int = 5  # failed logins per account or address before a lockout
    login_lockout_minutes: int = 15
    cookie_secure: str = "auto"  # auto: Secure cookies over HTTPS and on loopback; on; off
    audit_retention_days: int = 2557  # seven years
    audit_syslog: str = ""  # udp://HOST:PORT or tcp://HOST:PORT: audit events as RFC 5424 syslog too
    cors_origins: tuple[str, ...] = ()
    qido_default_limit: int = 100
    qido_max_limit: int = 1000
    duplicate_policy: str = "keep"
    # Store some modalities compressed: "CT=jpeg2000-lossless,MR=jpegls-lossless" (names in
    # COMPRESSION_NAMES, or transfer syntax UIDs). Off by default: files are kept as sent.
    compress_on_ingest: str = ""
    log_level: str = "info"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or (self.data_dir / "storage").resolve().as_uri()

    @property
    def compression_policy(self) -> dict[str, str]:
        """Modality -> transfer syntax UID to store it in (MINIPACS_COMPRESS_ON_INGEST)."""
        policy = {}
        for entry in (e.strip() for e in self.compress_on_ingest.split(",")):
            if not entry:
                continue
            modality, equals, target = (part.strip() for part in entry.partition("="))
            if not equals or not modality or not target:
                raise ConfigError(f"MINIPACS_COMPRESS_ON_INGEST: {entry!r} is not MODALITY=SYNTAX")
            uid = COMPRESSION_NAMES.get(target.lower(), target)
            if uid not in COMPRESSION_NAMES.values():
                names = ", ".join(COMPRESSION_NAMES)
                raise ConfigError(f"MINIPACS_COMPRESS_ON_INGEST: {target!r} is not one of {names} (or their UIDs)")
            policy[modality.upper()] = uid
        return policy

    @property
    def effective_hl7_host(self) -> str:
        return self.hl7_host or self.http_host

    @property
    def is_embedded(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def worker_count(self) -> int:
        """Worker processes `minipacs serve` runs (see pacs.serving)."""
        if self.http_workers:
            return self.http_workers
        return max(1, min(os.cpu_count() or 1, AUTO_WORKERS_MAX))

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Settings:
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        path = config_file or environ.get("MINIPACS_CONFIG")
        if path:
            raw.update(_read_toml(Path(path)))
        for name, value in environ.items():
            if name.startswith("MINIPACS_") and name != "MINIPACS_CONFIG":
                raw[name.removeprefix("MINIPACS_").lower()] = value
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Settings:
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        if str(raw.get("http_workers", "")).strip().lower() == "auto":
            raw = {**raw, "http_workers": 0}
        if str(raw.get("hl7_port", "")).strip().lower() == "off":  # MINIPACS_HL7_PORT=off: no listener
            raw = {**{k: v for k, v in raw.items() if k != "hl7_port"}, "hl7_enabled": False}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in raw.items():
            if key in known:
                values[key] = _coerce(key, value, known[key].type)
            else:
                extra[key] = value
        if "qido_max_limit" in values and "qido_default_limit" not in values:
            # Only the ceiling was set: the default page size follows it down.
            values["qido_default_limit"] = min(cls.qido_default_limit, values["qido_max_limit"])
        settings = cls(**values, extra=extra)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        updated = dataclasses.replace(self, **changes)
        updated.validate()
        return updated

    def validate(self) -> None:
        if self.duplicate_policy not in DUPLICATE_POLICIES:
            raise ConfigError(
                f"MINIPACS_DUPLICATE_POLICY must be one of {', '.join(DUPLICATE_POLICIES)}, "
                f"not {self.duplicate_policy!r}"
            )
        if self.auth not in ("on", "off"):
            raise ConfigError(f"MINIPACS_AUTH must be 'on' or 'off', not {self.auth!r}")
        if self.cookie_secure not in ("auto", "on", "off"):
            raise ConfigError(f"MINIPACS_COOKIE_SECURE must be auto, on or off, not {self.cookie_secure!r}")
        if bool(self.http_tls_cert) != bool(self.http_tls_key):
            raise ConfigError("MINIPACS_HTTP_TLS_CERT and MINIPACS_HTTP_TLS_KEY go together")
        if bool(self.dicom_tls_cert) != bool(self.dicom_tls_key):
            raise ConfigError("MINIPACS_DICOM_TLS_CERT and MINIPACS_DICOM_TLS_KEY go together")
        if self.audit_syslog and not self.audit_syslog.startswith(("udp://", "tcp://")):
            raise ConfigError(f"MINIPACS_AUDIT_SYSLOG must be udp://HOST:PORT or tcp://HOST:PORT, not {self.audit_syslog!r}")
        _ = self.compression_policy  # raises ConfigError when malformed
        if self.qido_max_limit < 1:
            raise ConfigError(f"MINIPACS_QIDO_MAX_LIMIT must be at least 1, not {self.qido_max_limit}")
        if not 0 < self.qido_default_limit <= self.qido_max_limit:
            raise ConfigError("MINIPACS_QIDO_DEFAULT_LIMIT must be between 1 and MINIPACS_QIDO_MAX_LIMIT")
        title = self.ae_title.strip()
        if not 1 <= len(title) <= 16 or not title.isascii() or not title.isprintable() or "\\" in title:
            raise ConfigError("MINIPACS_AE_TITLE must be 1 to 16 printable ASCII characters, without backslash")
        if self.dicom_timezone:
            _check_time_zone(self.dicom_timezone)
        if self.remote_aes:
            from pacs.errors import InvalidInput
            from pacs.index.remote_aes import parse_remote_aes

            try:
                parse_remote_aes(self.remote_aes)
            except InvalidInput as exc:
                raise ConfigError(f"MINIPACS_REMOTE_AES: {exc}") from None
        for name in (
            "dicom_max_associations",
            "dicom_acse_timeout",
            "dicom_dimse_timeout",
            "dicom_network_timeout",
            "session_hours",
            "token_days",
            "login_max_failures",
            "login_lockout_minutes",
            "audit_retention_days",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"MINIPACS_{name.upper()} must be at least 1")
        if not 0 <= self.http_workers <= 64:
            raise ConfigError(f"MINIPACS_HTTP_WORKERS must be auto or 1 to 64, not {self.http_workers}")
        if self.hl7_max_message_bytes < 1024:
            raise ConfigError("MINIPACS_HL7_MAX_MESSAGE_BYTES must be at least 1024")
        for name in ("http_port", "dicom_port", "dicom_tls_port", "hl7_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"MINIPACS_{name.upper()} must be a TCP port, not {port}")


def _check_time_zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"MINIPACS_DICOM_TIMEZONE: {name!r} is not a known time zone (e.g. Europe/Paris)") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return {key.lower(): value for key, value in tomllib.load(fh).items()}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn an environment string (or a TOML value) into the field's type."""
    kind = str(annotation)
    try:
        if kind == "Path":
            return Path(str(value))
        if kind == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ConfigError(f"MINIPACS_{key.upper()} must be on or off, not {value!r}")
            return lowered in _TRUE
        if kind == "int":
            if isinstance(value, bool) or not str(value).strip().lstrip("+-").isdigit():
                raise ConfigError(f"MINIPACS_{key.upper()} must be an integer, not {value!r}")
            return int(value)
        if kind.startswith("tuple"):
            if isinstance(value, (list, tuple)):
                return tuple(str(v).strip() for v in value if str(v).strip())
            return tuple(v.strip() for v in str(value).split(",") if v.strip())
        if kind == "str":
            if key == "auth" and isinstance(value, bool):
                return "on" if value else "off"
            text = str(value).strip()
            if key == "auth":
                lowered = text.lower()
                return "on" if lowered in _TRUE else "off" if lowered in _FALSE else lowered
            if key == "cookie_secure":
                lowered = text.lower()
                return "on" if lowered in _TRUE else "off" if lowered in _FALSE else lowered
            return text.lower() if key in ("duplicate_policy", "log_level") else text
        if "None" in kind:
            return str(value) or None
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"MINIPACS_{key.upper()}: {exc}") from exc
    return value
