"""The package version: its one home (``pyproject.toml`` reads it; tickets record it)."""
__version__ = "0.2.0.dev0"
