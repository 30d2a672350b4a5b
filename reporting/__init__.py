"""Radiology reports (grows in later releases)."""
