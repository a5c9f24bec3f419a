"""On-disk score cache: one SQLite file per dataset, keyed by (image content hash, evaluator config hash).

SQLite in WAL mode makes each write atomic and lets several processes (DDP ranks, a second
scoring run) write one file at once; a killed run loses nothing already committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from cat_tokenizer.data.default_data import cache_dir
from cat_tokenizer.errors import UserInputError

log = logging.getLogger(__name__)

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


SQLITE_MAGIC = b"SQLite format 3\x00"
OUR_TABLES = {"scores", "file_stats"}


def _refuse_foreign(path: Path) -> None:
    """Refuse a cache path that holds something else than a score cache (policy 4 of ``outputs``)."""
    if path.is_dir():
        raise UserInputError(f"score cache {path} is a folder; give a file path (e.g. {path / 'scores.sqlite'})")
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise UserInputError(f"score cache {path} exists and is not a SQLite file (an image or other data?); "
                             "it is left as it is: give another --cache path")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return  # our magic but unreadable: a damaged cache, moved aside by ScoreCache
    if tables and not tables <= OUR_TABLES:
        raise UserInputError(f"score cache {path} is another SQLite database (tables {sorted(tables)[:5]}); "
                             "it is left as it is: give another --cache path")


class ScoreCache:
    """``(content_hash, evaluator_hash) -> (score, description)``.

    Every lookup hashes the file's bytes (SHA-256: about 1.3 ms for a 300 KB image here, against
    tens of ms to describe it), so an image rewritten in place always gets a new score. With
    ``trust_stat`` a re-run skips reading files whose ``(size, mtime, ctime, inode)`` are unchanged
    (ctime cannot be set back by ``os.utime``, so a rewrite with a restored mtime is still seen).

    The cache owns only its own file (``cat_tokenizer.outputs``, policy 4): a path that is a folder,
    a file that is not SQLite (an image, say) or a SQLite database with other tables is refused with
    one line. A cache of ours that SQLite cannot read (malformed) is moved aside to
    ``<name>.corrupt-<time>`` with one warning, and an empty one is started: scores are derived data.
    Scores that are not finite numbers are neither stored nor trusted (SQLite stores NaN as NULL).

    Args:
        path: the SQLite file (created with its folder).
        timeout: seconds a writer waits for another writer's lock.
        trust_stat: reuse a file's hash while its stat signature is unchanged (opt-in shortcut).
    """

    def __init__(self, path: str | Path, timeout: float = 60.0, trust_stat: bool = False):
        self.path = Path(path).expanduser()
        _refuse_foreign(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.trust_stat = trust_stat
        try:
            self._open(timeout)
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
                raise
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{self.path}{suffix}").exists():
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            log.warning("score cache %s is unreadable (%s): moved aside to %s; starting an empty one", self.path, err, aside.name)
            self._open(timeout)

    def _open(self, timeout: float) -> None:
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
                    "CREATE TABLE IF NOT EXISTS file_stats (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                    " ctime_ns INTEGER, inode INTEGER, content TEXT)"
                )
                self._db.commit()
                check = self._db.execute("PRAGMA quick_check").fetchone()
                if check is None or check[0] != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {check[0] if check else 'no answer'}")
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    self._db.close()
                    raise
                self._db.rollback()
                time.sleep(0.05 + 0.1 * random.random())
            except sqlite3.DatabaseError:
                self._db.close()
                raise

    def content_hashes(self, paths: Iterable[str | Path]) -> list[str | None]:
        """Content hash per path (None for a file that cannot be read). With ``trust_stat``, a
        file whose size, mtime, ctime and inode match the last hashing reuses that hash."""
        paths = [str(p) for p in paths]
        if not self.trust_stat:
            out: list[str | None] = []
            for p in paths:
                try:
                    out.append(content_hash(p))
                except OSError:
                    out.append(None)
            return out
        memo: dict[str, tuple] = {}
        for i in range(0, len(paths), 500):
            part = paths[i : i + 500]
            rows = self._db.execute(f"SELECT path, size, mtime_ns, ctime_ns, inode, content FROM file_stats "
                                    f"WHERE path IN ({','.join('?' * len(part))})", part)
            memo.update({row[0]: row[1:] for row in rows})
        out = []
        fresh = []
        for p in paths:
            try:
                st = Path(p).stat()
                sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                known = memo.get(p)
                if known is not None and tuple(known[:4]) == sig:
                    out.append(known[4])
                    continue
                h = content_hash(p)
            except OSError:
                out.append(None)
                continue
            out.append(h)
            fresh.append((p, *sig, h))
        if fresh:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO file_stats VALUES (?, ?, ?, ?, ?, ?)", fresh)
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
            out.update({c: (s, d) for c, s, d in rows if s is not None and math.isfinite(s)})  # NULL: rescore
        return out

    def put_many(self, items: Iterable[tuple[str, float, str]], evaluator: str) -> None:
        """Store ``(content_hash, score, description)`` rows in one transaction."""
        rows = [(c, evaluator, float(s), d) for c, s, d in items if s is not None and math.isfinite(float(s))]
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
            files = src.execute("SELECT path, size, mtime_ns, ctime_ns, inode, content FROM file_stats").fetchall()
        finally:
            src.close()
        with target._db:
            target._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)", rows)
            target._db.executemany("INSERT OR REPLACE INTO file_stats VALUES (?, ?, ?, ?, ?, ?)", files)
        total += len(rows)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{shard}{suffix}").unlink(missing_ok=True)
    return total
