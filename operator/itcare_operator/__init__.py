"""Kubernetes operator that keeps a fresh cegedim.cloud ITCare OAuth2 token in a Secret."""

from itcare_operator._version import __version__

__all__ = ["__version__"]
