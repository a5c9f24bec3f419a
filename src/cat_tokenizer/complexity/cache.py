"""On-disk score cache: one SQLite file per dataset, keyed by (image content hash, evaluator config hash).

SQLite in WAL mode makes each write atomic and lets several processes (DDP ranks, a second
scoring run) write one file at once; a killed run loses nothing already committed.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from cat_tokenizer.data.default_data import cache_dir

__all__ = ["ScoreCache", "content_hash", "config_hash", "merge_shards", "default_score_cache"]


def content_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (so a renamed file keeps its score and an edited one does not)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_score_cache(root: str | Path) -> Path:
    """One SQLite score cache per dataset folder, under the project cache."""
    key = hashlib.sha1(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "scores" / f"{Path(root).name or 'root'}-{key}.sqlite"


def config_hash(config: dict) -> str:
    """Stable hash of an evaluator's config (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ScoreCache:
    """``(content_hash, evaluator_hash) -> (score, description)``, plus a memo of file content
    hashes keyed by ``(path, size, mtime)`` so a re-run on a large dataset only stats its files
    instead of reading them all again.

    Args:
        path: the SQLite file (created with its folder).
        timeout: seconds a writer waits for another writer's lock.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=timeout)
        # Several processes (DDP ranks) may open a new file at once; switching to WAL and creating
        # the tables can then fail with "database is locked" without waiting, so retry for a while.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS scores (content TEXT, evaluator TEXT, score REAL, description TEXT,"
                    " PRIMARY KEY (content, evaluator))"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, content TEXT)"
                )
                self._db.commit()
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                self._db.rollback()
                time.sleep(0.05 + 0.1 * random.random())

    def content_hashes(self, paths: Iterable[str | Path]) -> list[str | None]:
        """Content hash per path (None for a file that cannot be read), from the memo when the
        file's size and mtime are unchanged, else computed and remembered."""
        paths = [str(p) for p in paths]
        memo: dict[str, tuple[int, int, str]] = {}
        for i in range(0, len(paths), 500):
            part = paths[i : i + 500]
            rows = self._db.execute(f"SELECT path, size, mtime_ns, content FROM files WHERE path IN ({','.join('?' * len(part))})", part)
            memo.update({p: (sz, mt, c) for p, sz, mt, c in rows})
        out: list[str | None] = []
        fresh = []
        for p in paths:
            try:
                st = Path(p).stat()
                known = memo.get(p)
                if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
                    out.append(known[2])
                    continue
                h = content_hash(p)
            except OSError:
                out.append(None)
                continue
            out.append(h)
            fresh.append((p, st.st_size, st.st_mtime_ns, h))
        if fresh:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", fresh)
        return out

    def get_many(self, contents: Iterable[str], evaluator: str) -> dict[str, tuple[float, str]]:
        """Cached ``{content_hash: (score, description)}`` for those present."""
        keys = list(contents)
        out: dict[str, tuple[float, str]] = {}
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            part = keys[i : i + 500]
            rows = self._db.execute(
                f"SELECT content, score, description FROM scores WHERE evaluator=? AND content IN ({','.join('?' * len(part))})",
                [evaluator, *part],
            )
            out.update({c: (s, d) for c, s, d in rows})
        return out

    def put_many(self, items: Iterable[tuple[str, float, str]], evaluator: str) -> None:
        """Store ``(content_hash, score, description)`` rows in one transaction."""
        rows = [(c, evaluator, float(s), d) for c, s, d in items]
        with self._db:  # one transaction: all rows or none
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)

    def count(self, evaluator: str | None = None) -> int:
        """Rows in the cache (for one evaluator hash, or all)."""
        if evaluator is None:
            return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM scores WHERE evaluator=?", (evaluator,)).fetchone()[0]

    def evaluators(self) -> set[str]:
        """Evaluator hashes with rows in this cache (to say when a config change rescored everything)."""
        return {e for (e,) in self._db.execute("SELECT DISTINCT evaluator FROM scores")}

    def close(self) -> None:
        self._db.close()


def merge_shards(target: ScoreCache, shards: Iterable[str | Path]) -> int:
    """Copy every row of the shard caches into ``target`` (one transaction each), then delete them.

    Returns the number of rows merged. A shard that fails to merge is kept for the next run.
    """
    total = 0
    for shard in shards:
        shard = Path(shard)
        src = sqlite3.connect(shard)
        try:
            rows = src.execute("SELECT content, evaluator, score, description FROM scores").fetchall()
            files = src.execute("SELECT path, size, mtime_ns, content FROM files").fetchall()
        finally:
            src.close()
        with target._db:
            target._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)
            target._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", files)
        total += len(rows)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{shard}{suffix}").unlink(missing_ok=True)
    return total
