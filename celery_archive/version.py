"""The package's version (a module of its own: manifests record it, and nothing here imports the rest)."""

__version__ = "0.1.0"
