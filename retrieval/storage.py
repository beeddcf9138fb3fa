"""The data dir's disk: free space kept in reserve, and writability, checked before anything is written.

qdrant-edge keeps its WAL and vectors in memory-mapped files that it extends sparsely (a new WAL segment is a
32 MiB hole). On a full filesystem, storing into a page that has no block behind it is not an error the engine
can report: the kernel sends SIGBUS and the process dies without a log line. Opening an index is a write too (it
replays the WAL into its segments, measured at ~20 MB for a 32 MB WAL), so a full disk kills ``ragops serve`` at
start as well. Hence one rule, ``DiskGuard.check``: a write (or an open) that would leave the filesystem with less
than ``min_free_disk_mb`` free is refused with ``StorageFullError`` before the engine sees it. The margin has to
cover what the engine writes beyond the estimate (a fresh WAL segment, segment files growing by a chunk), so keep
it well above 64 MB; other processes filling the disk between the check and the write are not covered.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retrieval.index import IndexPoint, StorageFullError, StorageReadOnlyError

MB = 1024 * 1024
# A point is stored about three times: in the WAL, in its segment's vector and payload storage, and again
# in a new segment when the optimizer merges segments.
WRITE_AMPLIFICATION = 3


@dataclass(frozen=True)
class DiskGuard:
    """Refuses writes that would leave the filesystem holding ``path`` with less than ``min_free_mb`` free."""

    path: Path
    min_free_mb: int

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use (root's reserved blocks are not counted on)."""
        stats = os.statvfs(_existing_ancestor(self.path))
        return stats.f_bavail * stats.f_frsize

    def check(self, needed_bytes: int = 0, action: str = "write to the index") -> None:
        free = self.free_bytes()
        if free - needed_bytes >= self.min_free_mb * MB:
            return
        needed = f", needs ~{_mb(needed_bytes)} MB" if needed_bytes else ""
        raise StorageFullError(
            f"refusing to {action}: {_mb(free)} MB free on the filesystem of {self.path}{needed}, and "
            f"RAGOPS_MIN_FREE_DISK_MB={self.min_free_mb} must stay free; free some space or move the data dir to a "
            "larger disk, then try again"
        )


def estimated_bytes(points: Sequence[IndexPoint]) -> int:
    """What writing ``points`` may take on disk: vectors and payload, times the engine's copies of them."""
    raw = sum(
        point.dense.nbytes + 8 * len(point.sparse.indices) + len(json.dumps(point.payload, ensure_ascii=False))
        for point in points
    )
    return raw * WRITE_AMPLIFICATION


def estimated_chunk_bytes(text: str, dimension: int) -> int:
    """The same before a chunk is embedded: its dense vector, its BM25 vector (8 bytes a term, about one term per
    4 bytes of text), its payload (the text and about 1 KB of ids, headings, metadata), times the copies."""
    text_bytes = len(text.encode())
    return (4 * dimension + 2 * text_bytes + text_bytes + 1024) * WRITE_AMPLIFICATION


def ensure_writable(directory: Path) -> None:
    """Create ``directory`` if needed and prove a file can be created in it (mode bits alone lie for root and
    say nothing about read-only mounts)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(f"cannot write to {directory}: {reason}; free some space and start again") from exc
        raise StorageReadOnlyError(
            f"cannot write to {directory}: {reason}; ragops keeps its index and caches under the data dir: mount it "
            "read-write or fix its permissions, or set RAGOPS_DATA_DIR to a writable directory"
        ) from exc


def allocated_bytes(directory: Path) -> int:
    """Disk blocks the files under ``directory`` hold (sparse WAL segments count for what they use)."""
    return sum(path.stat().st_blocks * 512 for path in directory.rglob("*") if path.is_file())


def _existing_ancestor(path: Path) -> Path:
    # The data dir may not exist yet (first start): its filesystem is that of the nearest existing parent.
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _mb(size: int) -> int:
    return max(size, 0) // MB
