"""Bulk embedding jobs: a file or folder of inputs to Parquet vectors, in-process or on Ray Data. No HTTP."""
