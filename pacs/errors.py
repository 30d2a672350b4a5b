"""Domain exceptions shared by every protocol edge.

    PacsError
    ├── InvalidInput              the caller sent something we cannot accept
    │   ├── InvalidDicom          not DICOM, truncated, or required UIDs missing/invalid
    │   ├── InvalidQuery          malformed search parameters
    │   ├── StudyMismatch         instance does not belong to the study named in the request
    │   ├── InstanceMismatch      the data set is not the instance the request announced
    │   ├── InvalidMessage        an HL7 v2 message we cannot read (encoding characters, segments)
    │   │   └── MissingField      a field the message type requires is empty (e.g. PID-3)
    │   ├── UnsupportedMessage    an HL7 v2 message type, event or version we do not take
    │   ├── MissingAttribute      a DICOM attribute the operation requires is absent
    │   │   └── MissingAttributeValue   ... or present without a value
    │   └── InvalidAttributeValue a DICOM attribute holds a value the operation does not allow
    ├── NotAuthenticated          no credential, or one we do not accept
    │   └── TooManyAttempts       too many failed logins for the account or the address
    ├── Forbidden                 the caller is known but may not do this
    ├── NotFound                  no such study / series / instance / frame
    ├── Conflict                  the request clashes with what is stored
    │   └── DuplicateInstance     same SOPInstanceUID already stored and policy is "reject"
    ├── NotAcceptable             we cannot produce any representation the client accepts
    ├── UnsupportedMediaType      we cannot read the representation the client sent
    └── Unavailable               a backend (storage or database) is down
        ├── StorageUnavailable
        └── DatabaseUnavailable

Protocol codes (HTTP statuses, DIMSE statuses) live in the protocol packages, never here.
"""

from __future__ import annotations


class PacsError(Exception):
    """Base class of every error the archive reports to a client."""


class InvalidInput(PacsError):
    pass


class InvalidDicom(InvalidInput):
    pass


class InvalidQuery(InvalidInput):
    pass


class StudyMismatch(InvalidInput):
    pass


class InstanceMismatch(InvalidInput):
    pass


class InvalidMessage(InvalidInput):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # where in the message, e.g. "PID-3"


class MissingField(InvalidMessage):
    pass


class UnsupportedMessage(InvalidInput):
    pass


class MissingAttribute(InvalidInput):
    pass


class MissingAttributeValue(MissingAttribute):
    pass


class InvalidAttributeValue(InvalidInput):
    pass


class NotAuthenticated(PacsError):
    pass


class TooManyAttempts(NotAuthenticated):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Forbidden(PacsError):
    pass


class NotFound(PacsError):
    pass


class Conflict(PacsError):
    pass


class DuplicateInstance(Conflict):
    pass


class NotAcceptable(PacsError):
    pass


class UnsupportedMediaType(PacsError):
    pass


class Unavailable(PacsError):
    pass


class StorageUnavailable(Unavailable):
    pass


class DatabaseUnavailable(Unavailable):
    pass
