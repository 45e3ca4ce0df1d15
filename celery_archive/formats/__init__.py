"""Data file formats: ``writer`` writes records as Parquet or JSONL files, ``readback`` reads
them back (verification, purge planning, restore), ``locate`` finds where each record sits in
a file (the restore index) and fetches one. This module names what each format takes and
imports nothing, so configuration can check a choice without loading a writer."""

COMPRESSIONS = {"parquet": ("zstd", "snappy", "gzip", "none"), "jsonl": ("none", "zstd", "gzip")}
DEFAULT_COMPRESSION = {"parquet": "zstd", "jsonl": "none"}
