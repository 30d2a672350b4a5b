"""Static assets of the embedded viewer (grows in later releases)."""
