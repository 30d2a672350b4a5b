"""DIMSE services (pynetdicom): C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET over the same services as DICOMweb."""
