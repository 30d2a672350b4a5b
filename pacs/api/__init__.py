"""HTTP API beside DICOMweb: login and sessions, and administration (users, tokens, AEs, audit)."""
