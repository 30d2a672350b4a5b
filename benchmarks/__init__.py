"""Benchmarks: minipacs (and Orthanc) under the same DICOMweb load; see README.md."""
