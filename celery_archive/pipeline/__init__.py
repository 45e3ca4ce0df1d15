"""The archive's stages: extract (sql), serialize, manifest, verify, purge, and the run."""
