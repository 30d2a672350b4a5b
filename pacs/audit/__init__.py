"""The audit trail of PHI access: events, their storage and their export."""
