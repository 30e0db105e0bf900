"""The package version, read by hatchling at build time and by ``/api/health``."""

__version__ = "0.1.0"
