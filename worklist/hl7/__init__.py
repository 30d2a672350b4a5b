"""HL7 v2: order intake over MLLP and order messages for export."""
