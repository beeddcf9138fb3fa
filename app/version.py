"""The installed package's version: ``ragops --version`` and the ``service.version`` of exported traces."""

from __future__ import annotations


def installed_version() -> str:
    """The version in the installed package's metadata (pyproject's ``version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ragops")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"
