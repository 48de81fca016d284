"""Remember file hashes by their stat: a rerun over unchanged files hashes nothing.

The memo maps a path to (size, mtime_ns, ctime_ns, inode) and the sha256 computed for them. An entry
is used only when all four still match, so a file that was rewritten, touched, replaced or moved
onto that path is hashed again (``ctime`` changes on every write and cannot be set back by a
user, unlike ``mtime``). It is an SQLite file in WAL mode: each run's new entries are committed in
one transaction, so a process killed at any moment leaves the memo as it was before the run or
with the run's entries, never half of one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
#: The memo's file name in a workspace's ``features/`` folder.
HASH_MEMO = "hash-memo.sqlite"


def file_stat(path: str | os.PathLike) -> Stat:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class HashMemo:
    """A stat-keyed sha256 memo (see module docstring).

    Parameters
    ----------
    path : the SQLite file (created on first use), e.g. ``<workdir>/features/hash-memo.sqlite``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._entries: dict[str, tuple[Stat, str]] | None = None
        self._new: dict[str, tuple[Stat, str]] = {}

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._open()
        except sqlite3.DatabaseError as error:  # garbage or a foreign file: it is only a memo, so rebuild it
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            log.warning("hash memo %s was unreadable (%s); rebuilt it empty (files are hashed again once)",
                        self.path, error)
            return self._open()

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=60)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, "
                               "mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER, sha256 TEXT)")
            connection.execute("SELECT path, size, mtime_ns, ctime_ns, inode, sha256 FROM hashes LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            connection.close()
            raise
        return connection

    def load(self) -> HashMemo:
        """Read every entry once (one query: fast for 100k+ files)."""
        if self._entries is None:
            with self._connect() as connection:
                rows = connection.execute("SELECT path, size, mtime_ns, ctime_ns, inode, sha256 FROM hashes").fetchall()
            self._entries = {path: ((size, mtime, ctime, inode), digest) for path, size, mtime, ctime, inode, digest in rows}
        return self

    def lookup(self, path: str, stat: Stat) -> str | None:
        """The remembered sha256 of ``path`` if its stat is unchanged, else None."""
        entry = self.load()._entries.get(path)
        return entry[1] if entry is not None and entry[0] == stat else None

    def remember(self, path: str, stat: Stat, digest: str) -> None:
        """Queue an entry; :meth:`commit` writes the queued entries."""
        self._new[path] = (stat, digest)

    def commit(self) -> int:
        """Write the queued entries in one transaction; returns how many."""
        if not self._new:
            return 0
        rows = [(path, *stat, digest) for path, (stat, digest) in self._new.items()]
        with self._connect() as connection:
            connection.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)", rows)
        if self._entries is not None:
            self._entries.update(self._new)
        written, self._new = len(self._new), {}
        return written
