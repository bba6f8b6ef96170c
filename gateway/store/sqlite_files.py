"""Notice when the SQLite database's files are deleted or replaced under a running gateway.

An open connection keeps writing to the files it opened, even once they are unlinked: after an
`rm -rf` of the data directory, or of the `-wal` file, SQLite reports every commit as a
success, and each acknowledged message goes to a file that no longer has a name. It is lost
when the process ends (or, for the write-ahead log, at the next crash), with nothing in the log
before. So before each batch the writer checks that the database and its write-ahead log are
still the files it opened (same device and inode). If not, every write is refused from then on
(503, nothing acknowledged, providers retry) and the log says why, once: only a restart, which
opens whatever file is at that path now, can make the store writable again. Two `stat` calls per
batch, not per message.
"""

from __future__ import annotations

import os
import sqlite3

import structlog

log = structlog.get_logger("gateway.store")


class FilesGone(sqlite3.OperationalError):
    """The database's files are not the ones the writer opened (an I/O error, for SQLite)."""


class DatabaseFiles:
    """The identity of the database file and its write-ahead log, as first seen."""

    def __init__(self, path: str) -> None:
        self.paths = (path, path + "-wal")
        self._seen: dict[str, tuple[int, int]] = {}
        self.gone: str | None = None
        """Why writes are refused (None while the files are the ones opened)."""

    def check(self, _conn: sqlite3.Connection | None = None) -> None:
        """Raise `FilesGone` if a file seen before was deleted or replaced since. A file not
        seen yet is recorded (the write-ahead log appears with the first write)."""
        if self.gone is None:
            self.gone = self._look()
            if self.gone is not None:
                log.error(
                    "store.files_gone",
                    reason=self.gone,
                    hint="writes are refused until the gateway is restarted",
                )
        if self.gone is not None:
            # Without the path: this reaches clients (503), the log line above names it.
            error = FilesGone(
                "the database files were deleted or replaced while the gateway ran;"
                " restart the gateway"
            )
            error.sqlite_errorcode = sqlite3.SQLITE_IOERR
            error.sqlite_errorname = "SQLITE_IOERR"
            raise error

    def _look(self) -> str | None:
        for path in self.paths:
            try:
                found = os.stat(path)
            except FileNotFoundError:
                if path in self._seen:
                    return f"the database file {path} was deleted while the gateway ran"
                continue
            identity = (found.st_dev, found.st_ino)
            if self._seen.setdefault(path, identity) != identity:
                return f"the database file {path} was replaced while the gateway ran"
        return None
