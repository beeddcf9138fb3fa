"""Files only their owner may read: the SQLite state store (key hashes, the audit trail), the key ledger and
backup archives are created mode 0600, and the folders ragops makes for them 0700 (the process umask can only
take more away). A file that exists keeps its mode: ``chmod`` is the operator's."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """``path`` and any missing parents; the ones made here are 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)


def create_private_file(path: Path) -> None:
    """An empty ``path`` (mode 0600, its folder made private when missing) unless it exists. SQLite opens an
    empty file as an empty database, and creates the WAL and shared-memory files with the database file's mode."""
    make_private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE_MODE))


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of ``path`` with ``flags``; a file it creates is 0600."""
    return os.open(path, flags, PRIVATE_FILE_MODE)


def fsync_dir(path: Path) -> None:
    """Make a file created or renamed in folder ``path`` durable: its name is in the folder's own data."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
