"""SQLite metadata: commit records, branches and each history's HEAD.

WAL + synchronous=FULL: a commit record and the ref move that publishes it are one SQLite
transaction, written only after every chunk it names is durable.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CorruptStoreError, StoreVersionError

#: 2: chunks may be compressed by byte planes (a format-1 store is upgraded when opened)
FORMAT_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commits (
    id TEXT PRIMARY KEY, history TEXT NOT NULL, time REAL NOT NULL,
    body BLOB NOT NULL, sig TEXT NOT NULL, signer TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS commits_by_history ON commits (history, time);
CREATE TABLE IF NOT EXISTS refs (
    history TEXT NOT NULL, branch TEXT NOT NULL, commit_id TEXT NOT NULL,
    PRIMARY KEY (history, branch));
CREATE TABLE IF NOT EXISTS heads (
    history TEXT PRIMARY KEY, branch TEXT, commit_id TEXT);
CREATE TABLE IF NOT EXISTS trusted_keys (key_id TEXT PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS remotes (name TEXT PRIMARY KEY, url TEXT NOT NULL,
    options TEXT NOT NULL);
"""


REQUIRED_TABLES = frozenset({"info", "commits", "refs", "heads", "trusted_keys", "remotes"})


class MetaDB:
    """Thin, typed access to the metadata tables; no policy lives here (refs.py decides how
    branches and HEAD move, repo.py what a commit record must be)."""

    def __init__(self, path: Path, create: bool):
        self.path = path
        self._writer = threading.RLock()  # the async writer thread shares this connection
        #: a write() is open (in the thread holding _writer). A flag, not a depth count: an
        #: interrupt between two bytecodes cannot leave it wrong for the next write
        self._open = False
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if create:
                self.conn.executescript(SCHEMA)
                self.conn.execute(
                    "INSERT OR IGNORE INTO info VALUES ('format', ?)", (str(FORMAT_VERSION),)
                )
            self._check_format()
            self.conn.execute("UPDATE info SET value=? WHERE key='format' AND value='1'",
                              (str(FORMAT_VERSION),))
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise CorruptStoreError(f"{path} is not a readable txpy database ({e})") from None

    def _check_format(self) -> None:
        row = self.conn.execute("SELECT value FROM info WHERE key='format'").fetchone()
        if row is None:
            raise CorruptStoreError(f"{self.path} has no format record")
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master")}
        missing = REQUIRED_TABLES - tables
        if missing and int(row[0]) <= FORMAT_VERSION:
            raise CorruptStoreError(f"{self.path} lacks the tables {', '.join(sorted(missing))}:"
                                    " damaged, or made by a development build of txpy")
        if int(row[0]) > FORMAT_VERSION:
            raise StoreVersionError(
                f"this store has format {row[0]}, written by a newer txpy; this txpy reads format "
                f"{FORMAT_VERSION}. Upgrade txpy (pip install -U txpy)."
            )

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: readers go on, other writers wait (busy timeout).

        A write() inside another one (same thread) joins it: the outermost commits or rolls
        back the whole, so a commit record and the ref moves that publish it compose without
        a connection handed around. Another thread sharing this connection waits for it.

        Whatever interrupts the outermost (an exception, KeyboardInterrupt between two
        statements, a failed COMMIT), the connection is left outside any transaction: the
        next write must not find this one still open.
        """
        with self._writer:
            if self._open:
                yield self.conn  # joins the outer transaction: only its owner gets here
                return
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            try:
                self._open = True
                self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
                self.conn.execute("COMMIT")
            finally:
                self._open = False
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")

    # commits
    def insert_commit(self, conn: sqlite3.Connection, cid: str, history: str, time: float,
                      body: bytes, sig: str, signer: str) -> None:
        conn.execute("INSERT OR IGNORE INTO commits VALUES (?, ?, ?, ?, ?, ?)",
                     (cid, history, time, body, sig, signer))

    def commit_row(self, cid: str) -> tuple[str, float, bytes, str, str] | None:
        """(history, time, body, signature, signer key id) of a commit."""
        return self.conn.execute(
            "SELECT history, time, body, sig, signer FROM commits WHERE id=?", (cid,)).fetchone()

    def has_commit(self, cid: str) -> bool:
        return self.conn.execute("SELECT 1 FROM commits WHERE id=?", (cid,)).fetchone() is not None

    def commit_ids_with_prefix(self, prefix: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT id FROM commits WHERE id >= ? AND id < ? LIMIT 2", (prefix, prefix + "g")
        ).fetchall()
        return [r[0] for r in rows]

    def commit_ids(self, history: str | None = None) -> list[str]:
        """Ids of the commits of history (of every history when None), oldest first."""
        if history is None:
            q = self.conn.execute("SELECT id FROM commits ORDER BY time")
        else:
            q = self.conn.execute("SELECT id FROM commits WHERE history=? ORDER BY time",
                                  (history,))
        return [r[0] for r in q.fetchall()]

    # trust and remotes
    def trusted_keys(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key_id, label FROM trusted_keys").fetchall())

    def trust_key(self, conn: sqlite3.Connection, key_id: str, label: str) -> None:
        conn.execute("INSERT OR IGNORE INTO trusted_keys VALUES (?, ?)", (key_id, label))

    def remotes(self) -> dict[str, tuple[str, str]]:
        """{name: (url, options as JSON)}"""
        rows = self.conn.execute("SELECT name, url, options FROM remotes ORDER BY name")
        return {name: (url, options) for name, url, options in rows.fetchall()}

    def set_remote(self, conn: sqlite3.Connection, name: str, url: str, options: str) -> None:
        conn.execute("INSERT OR REPLACE INTO remotes VALUES (?, ?, ?)", (name, url, options))

    def histories(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT history FROM heads ORDER BY history")]

    # refs
    def branches(self, history: str) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT branch, commit_id FROM refs WHERE history=? ORDER BY branch", (history,))
        return dict(rows.fetchall())

    def branch_commit(self, history: str, branch: str) -> str | None:
        row = self.conn.execute(
            "SELECT commit_id FROM refs WHERE history=? AND branch=?", (history, branch)
        ).fetchone()
        return row[0] if row else None

    def set_branch(self, conn: sqlite3.Connection, history: str, branch: str, cid: str) -> None:
        conn.execute("INSERT OR REPLACE INTO refs VALUES (?, ?, ?)", (history, branch, cid))

    def head(self, history: str) -> tuple[str | None, str | None]:
        """(branch, commit id): branch is None when HEAD is detached at commit id. One query,
        so that a branch moved by another process is read whole."""
        row = self.conn.execute(
            "SELECT h.branch, CASE WHEN h.branch IS NULL THEN h.commit_id ELSE r.commit_id END "
            "FROM heads h LEFT JOIN refs r ON r.history = h.history AND r.branch = h.branch "
            "WHERE h.history=?", (history,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def set_head(self, conn: sqlite3.Connection, history: str, branch: str | None,
                 cid: str | None) -> None:
        conn.execute("INSERT OR REPLACE INTO heads VALUES (?, ?, ?)",
                     (history, branch, None if branch else cid))
