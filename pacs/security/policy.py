"""The access policy: which permission each operation needs, checked in one place for HTTP
routes and DIMSE services alike."""

from __future__ import annotations

from enum import StrEnum

from pacs.errors import Forbidden
from pacs.security.principal import Principal
from pacs.security.roles import ROLE_PERMISSIONS, Permission, Role


class Operation(StrEnum):
    SEARCH = "search"  # QIDO-RS, C-FIND
    READ = "read"  # WADO-RS, C-GET
    EXPORT = "export"  # C-MOVE: images sent on to another AE
    STORE = "store"  # STOW-RS, C-STORE, import
    DELETE = "delete"
    MANAGE_USERS = "manage-users"
    MANAGE_AES = "manage-aes"
    READ_AUDIT = "read-audit"
    OWN_TOKENS = "own-tokens"  # any signed-in user, for themselves
    READ_ORDERS = "read-orders"
    WRITE_ORDERS = "write-orders"  # create, change, move through the workflow, cancel
    REVIEW_RECONCILIATION = "review-reconciliation"  # unmatched studies, unlinked performed steps
    RECONCILE = "reconcile"  # link a study to an order, unlink it, dismiss it
    PERFORM_WORKITEMS = "perform-workitems"  # UPS-RS: claim, complete, cancel a procedure step
    EXPORT_ORDERS = "export-orders"  # orders written to a file for another RIS: PHI leaves
    READ_HL7_LOG = "read-hl7-log"  # HL7 messages received, raw: admins, for troubleshooting
    MANAGE_REFERENCE = "manage-reference"  # the modalities and body parts orders may name


REQUIRED: dict[Operation, Permission | None] = {
    Operation.SEARCH: Permission.READ,
    Operation.READ: Permission.READ,
    Operation.EXPORT: Permission.READ,
    Operation.STORE: Permission.STORE,
    Operation.DELETE: Permission.DELETE,
    Operation.MANAGE_USERS: Permission.MANAGE_USERS,
    Operation.MANAGE_AES: Permission.MANAGE_AES,
    Operation.READ_AUDIT: Permission.READ_AUDIT,
    Operation.OWN_TOKENS: None,
    Operation.READ_ORDERS: Permission.READ_ORDERS,
    Operation.WRITE_ORDERS: Permission.WRITE_ORDERS,
    # Reconciliation is order desk work, and its lists show studies of every patient.
    Operation.REVIEW_RECONCILIATION: Permission.WRITE_ORDERS,
    Operation.RECONCILE: Permission.WRITE_ORDERS,
    Operation.PERFORM_WORKITEMS: Permission.PERFORM_WORKITEMS,
    # Exporting marks orders as exported: a change, for those who may change orders.
    Operation.EXPORT_ORDERS: Permission.WRITE_ORDERS,
    # Raw messages hold every patient of every sender: like the audit trail, for admins only.
    Operation.READ_HL7_LOG: Permission.READ_AUDIT,
    Operation.MANAGE_REFERENCE: Permission.MANAGE_REFERENCE,
}


def missing_permission(principal: Principal, operation: Operation) -> Permission | None:
    """The permission ``operation`` needs and ``principal`` lacks, if any."""
    required = REQUIRED[operation]
    return None if required is None or principal.can(required) else required


def allowed(principal: Principal, operation: Operation) -> bool:
    return missing_permission(principal, operation) is None


def authorize(principal: Principal, operation: Operation) -> None:
    missing = missing_permission(principal, operation)
    if missing is not None:
        raise Forbidden(refusal(principal, missing))


def refusal(principal: Principal, required: Permission) -> str:
    """Names the permission missing, in the words of the role table and `token create --scope`
    (operations are internal: a caller can do nothing with their names)."""
    who = f"{principal.name} ({principal.role or principal.kind})"
    by_role = ROLE_PERMISSIONS[Role(principal.role)] if principal.kind == "user" else frozenset()
    if principal.via == "bearer" and required in by_role:  # the role has it; the token's scopes left it out
        return f"{who}: this token lacks the scope {required.value}"
    return f"{who} lacks the permission {required.value}"
