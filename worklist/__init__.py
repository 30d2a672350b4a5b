"""Orders, accession numbers, Modality Worklist, MPPS and HL7 v2 (grows in later releases)."""
