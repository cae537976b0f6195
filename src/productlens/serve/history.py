"""Each browser session's predictions, kept in SQLite so that a reload keeps them."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from productlens.fileio import folder_key

SCHEMA = """CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL, at REAL NOT NULL,
    thumbnail BLOB, top_category TEXT, probability REAL, top_product TEXT)"""
MAX_ROWS_PER_SESSION = 200
MAX_ROWS = 100_000         # in all sessions: the oldest rows go first (about 5 kB each with the thumbnail)
MAX_AGE_DAYS = 30          # rows older than this are removed
PRUNE_EVERY = 100          # inserts between two prunings of the whole table


class History:
    """The rows in SQLite at ``path``. A file replaced under the path (the catalog folder that holds it
    rebuilt) is opened again: rows had gone on into the replaced file, and were lost. A folder that is gone
    is an ``sqlite3.Error`` (the service answers without the row)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._inserts = 0
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a power cut may lose the last row
            db.execute(SCHEMA)
            db.execute("CREATE INDEX IF NOT EXISTS by_session ON history(session, id)")
        except BaseException:
            db.close()
            raise
        self._key = folder_key(self.path)
        return db

    def _current(self) -> sqlite3.Connection:
        """The connection, opened again when the file at ``path`` is another (or gone); hold ``_lock``."""
        if folder_key(self.path) != self._key:
            if not self.path.parent.is_dir():  # never made again here: the catalog folder was deleted
                raise sqlite3.OperationalError(f"{self.path.parent} no longer exists")
            new = self._open()  # before the old one is closed: a failure leaves the old one usable
            self._db.close()
            self._db = new
        return self._db

    def add(self, session: str, thumbnail: bytes, top_category: str, probability: float, top_product: str) -> int:
        with self._lock:
            cur = self._current().execute("INSERT INTO history(session, at, thumbnail, top_category, probability, top_product)"
                                   " VALUES (?, ?, ?, ?, ?, ?)",
                                   (session, time.time(), thumbnail, top_category, probability, top_product))
            row = int(cur.lastrowid)
            self._db.execute("DELETE FROM history WHERE session = ? AND id NOT IN (SELECT id FROM history WHERE "
                             "session = ? ORDER BY id DESC LIMIT ?)", (session, session, MAX_ROWS_PER_SESSION))
            self._inserts += 1
            if (self._inserts - 1) % PRUNE_EVERY == 0:  # every session's rows: by age, then by count
                self._db.execute("DELETE FROM history WHERE at < ?", (time.time() - MAX_AGE_DAYS * 86400,))
                self._db.execute("DELETE FROM history WHERE id <= ?", (row - MAX_ROWS,))
            return row

    def rows(self, session: str) -> list[dict]:
        with self._lock:
            cur = self._current().execute("SELECT id, at, top_category, probability, top_product FROM history "
                                   "WHERE session = ? ORDER BY id DESC", (session,))
            return [{"id": r[0], "at": r[1], "top_category": r[2], "probability": r[3], "top_product": r[4]}
                    for r in cur.fetchall()]

    def thumbnail(self, session: str, row_id: int) -> bytes | None:
        if not -2 ** 63 <= row_id < 2 ** 63:  # no SQLite row has such an id
            return None
        with self._lock:
            r = self._current().execute("SELECT thumbnail FROM history WHERE session = ? AND id = ?",
                                 (session, row_id)).fetchone()
        return None if r is None else r[0]

    def close(self) -> None:
        self._db.close()
