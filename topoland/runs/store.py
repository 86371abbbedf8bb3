"""The run directory: resolved config, SQLite index, per-cell stage results, atomic writes.

Layout::

    RUN/config.toml                 resolved config (what the run was asked to do)
    RUN/index.sqlite                cells, stage status, summaries, file checksums
    RUN/cells/<cell_id>/<stage>/    one folder per finished stage (safetensors, CSV, HDF5, JSON)
    RUN/run/<stage>/                run-level stages across cells (paths, analysis tables, report)
    RUN/.lock                       held by the process working on the run

What lies inside a stage folder, and the readers of it, is :mod:`topoland.runs.layout`.
Beside a stage folder may lie its resume data (:data:`RESUME_DATA`) and, after a killed
process, temporaries (``*.tmp-<pid>``). :meth:`RunStore.verify` flags anything else.

A stage's results are written into ``<stage>.tmp-<pid>/`` and renamed into place; only then is
the stage marked done in the index, with a SHA-256 of every file. A crash at any moment leaves
either a finished stage or an unfinished one that is redone, never a half-written result.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from topoland.errors import StoreError
from topoland.io import atomic_path, atomic_write_text
from topoland.runs import layout

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY, position INTEGER, label TEXT, settings TEXT, overrides TEXT);
CREATE TABLE IF NOT EXISTS stages (
    cell_id TEXT, stage TEXT, status TEXT, started REAL, finished REAL, seconds REAL,
    summary TEXT, error TEXT, PRIMARY KEY (cell_id, stage));
CREATE TABLE IF NOT EXISTS files (
    cell_id TEXT, stage TEXT, relpath TEXT, sha256 TEXT, size INTEGER,
    PRIMARY KEY (cell_id, stage, relpath));
"""

RUN_LEVEL = "_run"  # pseudo cell id of run-level stages (analysis, report, paths across cells)

#: resume data the stages keep beside their folder while they work (named in runs/layout.py,
#: written by the stage bodies of topoland/pipeline/)
RESUME_DATA = {"surface": (layout.SURFACE_PARTIAL, layout.SURFACE_PCA_PARTIAL), "paths": (layout.PATHS_PAIRS,)}
#: what a run directory's root may hold besides ``cells/`` and ``run/`` (the index's SQLite side
#: files exist while it is open, and after a killed process)
_ROOT_FILES = ("config.toml", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "index.sqlite-journal",
               ".lock")
_TMP = re.compile(r"\.tmp-\d+$")


def _inputs_key(cell_id: str, stage: str) -> str:
    return f"inputs/{cell_id}/{stage}"


def _is_temporary(name: str) -> bool:
    """A temporary of an atomic write (``<name>.tmp-<pid>``, ``.<name>.tmp-<pid>``): left only by
    a killed process, removed by the next run (:meth:`RunStore.clean_stale`)."""
    return bool(_TMP.search(name))

#: the columns of every index table, as the schema above creates them
_COLUMNS = {"meta": ("key", "value"), "cells": ("cell_id", "position", "label", "settings", "overrides"),
            "stages": ("cell_id", "stage", "status", "started", "finished", "seconds", "summary", "error"),
            "files": ("cell_id", "stage", "relpath", "sha256", "size")}
_SQLITE_MAGIC = b"SQLite format 3\0"
_INDEX_REMEDY = ("it is left as it is: restore it from a backup, or move the run directory aside and "
                 "run the config again into a fresh --out")


def index_problem(path) -> str | None:
    """Why the file at ``path`` is not a readable run index (``"is empty"``, ``"is truncated
    ..."``, ``"is garbled ..."``), or None when it is one. Reads only: the file is opened
    immutable, so not even SQLite's side files are created."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "is empty"
    if not head.startswith(_SQLITE_MAGIC[:len(head)]):
        return "is garbled (not an SQLite database)"
    if len(head) < 100:
        return f"is truncated ({size} bytes, shorter than an SQLite header)"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    n_pages = int.from_bytes(head[28:32], "big")
    wal = path.with_name(path.name + "-wal")
    # with a WAL left by a killed process the main file may lag behind its header until SQLite
    # replays the WAL: then only SQLite itself can tell (a plain connection, which replays it)
    pending = wal.is_file() and wal.stat().st_size > 0
    if not pending and head[24:28] == head[92:96] and size < page * n_pages:  # the page count is valid
        return f"is truncated ({size} bytes, its header says {page * n_pages})"
    try:
        con = (sqlite3.connect(path, timeout=30) if pending
               else sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True))
        try:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            cols = {t: {r[1] for r in con.execute(f"PRAGMA table_info({t})")} for t in _COLUMNS}
        finally:
            con.close()
    except sqlite3.Error as e:
        return f"is garbled ({e})"
    if check != "ok":
        return f"is garbled ({check})"
    bad = [t for t, want in _COLUMNS.items() if not set(want) <= cols[t]]
    if bad:
        return f"lacks the table(s) {', '.join(bad)} of a run index"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunStore:
    """A run directory. Open with :meth:`create` (new or matching) or :meth:`open` (existing)."""

    def __init__(self, path):
        self.path = Path(path).resolve()
        self._db_path = self.path / "index.sqlite"
        self._lock_fd = None

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, path, config_toml: str, cells) -> "RunStore":
        """Create a run directory for ``cells`` or reopen one made from the same config.

        A run directory made from a different grid is refused rather than mixed.
        """
        store = cls(path)
        if store._db_path.exists():
            store._check_index()
            store._check_cells(cells)
            return store
        store.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(store.path / "config.toml", config_toml)
        # the index is built under a temporary name and renamed: a killed create leaves no
        # empty or half-made index.sqlite that later commands would refuse
        with atomic_path(store._db_path) as tmp, store._db(tmp) as db:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                db.execute(stmt)
            for c in cells:
                db.execute("INSERT OR IGNORE INTO cells VALUES (?, ?, ?, ?, ?)",
                           (c.cell_id, c.position, c.label, json.dumps(c.config, default=str),
                            json.dumps(c.overrides, default=str)))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('created', ?)", (str(time.time()),))
        return store

    @classmethod
    def open(cls, path) -> "RunStore":
        """An existing run directory; refused (before anything is written) when its index is
        missing or unreadable."""
        store = cls(path)
        if not store._db_path.exists():
            raise StoreError(f"'{path}' is not a topoland run directory (no index.sqlite)")
        store._check_index()
        return store

    def _check_index(self):
        problem = index_problem(self._db_path)
        if problem:
            raise StoreError(f"run index '{self._db_path}' {problem}; {_INDEX_REMEDY}")

    def _index_error(self, e: Exception) -> StoreError:
        if "locked" in str(e) or "busy" in str(e):
            return StoreError(f"run index '{self._db_path}' is busy ({e}): another process is writing "
                              "it; wait for it and retry")
        return StoreError(f"run index '{self._db_path}' cannot be used ({e}); {_INDEX_REMEDY}")

    def _json(self, text, what: str):
        """Decode a JSON value stored in the index; a garbled one names the index and the row."""
        try:
            return json.loads(text)
        except (TypeError, ValueError) as e:
            raise StoreError(f"run index '{self._db_path}': {what} is garbled ({e}); {_INDEX_REMEDY}") from None

    def _check_cells(self, cells):
        stored = {r[0] for r in self._query("SELECT cell_id FROM cells")}
        new = {c.cell_id for c in cells}
        if stored != new:
            added, gone = sorted(new - stored), sorted(stored - new)
            raise StoreError(
                f"run directory '{self.path}' was made from a different grid "
                f"({len(added)} new cells, {len(gone)} missing): use another --out directory")

    @contextlib.contextmanager
    def _db(self, path=None):
        """A write transaction on the index (or on ``path``); SQLite errors become StoreError."""
        try:
            con = sqlite3.connect(path or self._db_path, timeout=30, isolation_level=None)
        except sqlite3.Error as e:
            raise self._index_error(e) from None
        try:
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=FULL")
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._index_error(e) from None
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._index_error(e) from None
                raise
        finally:
            con.close()

    def _query(self, sql, args=()):
        try:
            con = sqlite3.connect(self._db_path, timeout=30)
            try:
                return con.execute(sql, args).fetchall()
            finally:
                con.close()
        except sqlite3.Error as e:
            raise self._index_error(e) from None

    # -- locking --------------------------------------------------------------------------
    def lock(self):
        """Take the run's exclusive lock; a second process gets a clear StoreError."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"run directory '{self.path}' is in use by process {other}; "
                             "wait for it to finish (two runs on one directory would corrupt it)") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        return self

    def unlock(self):
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self.lock()

    def __exit__(self, *exc):
        self.unlock()

    # -- cells and stages -----------------------------------------------------------------
    def config_text(self) -> str:
        return (self.path / "config.toml").read_text()

    def cells(self) -> pd.DataFrame:
        rows = self._query("SELECT cell_id, position, label, settings, overrides FROM cells ORDER BY position")
        return pd.DataFrame(
            [{"cell_id": r[0], "position": r[1], "label": r[2],
              "settings": self._json(r[3], f"the settings of cell '{r[0]}'"),
              "overrides": self._json(r[4], f"the overrides of cell '{r[0]}'")} for r in rows])

    def cell_config(self, cell_id: str) -> dict:
        rows = self._query("SELECT settings FROM cells WHERE cell_id = ?", (cell_id,))
        if not rows:
            raise StoreError(f"no cell '{cell_id}' in run '{self.path}'")
        return self._json(rows[0][0], f"the settings of cell '{cell_id}'")

    def stage_dir(self, cell_id: str, stage: str) -> Path:
        return self.path / "cells" / cell_id / stage if cell_id != RUN_LEVEL else self.path / "run" / stage

    def status(self, cell_id: str, stage: str) -> str | None:
        rows = self._query("SELECT status FROM stages WHERE cell_id = ? AND stage = ?", (cell_id, stage))
        return rows[0][0] if rows else None

    def is_done(self, cell_id: str, stage: str) -> bool:
        return self.status(cell_id, stage) == "done"

    def summary(self, cell_id: str, stage: str) -> dict:
        rows = self._query("SELECT summary FROM stages WHERE cell_id = ? AND stage = ? AND status = 'done'",
                           (cell_id, stage))
        if not rows:
            raise StoreError(f"stage '{stage}' of cell '{cell_id}' is not finished")
        return self._json(rows[0][0] or "{}", f"the summary of stage '{stage}' of cell '{cell_id}'")

    def stages(self) -> pd.DataFrame:
        rows = self._query("SELECT cell_id, stage, status, started, finished, seconds, summary, error FROM stages")
        return pd.DataFrame(rows, columns=["cell_id", "stage", "status", "started", "finished", "seconds",
                                           "summary", "error"])

    @contextlib.contextmanager
    def stage(self, cell_id: str, stage: str):
        """Write a stage's results atomically.

        Yields a temporary folder; the body writes into it and may set ``box["summary"]`` and
        ``box["inputs"]`` (the config values the stage read, see :meth:`inputs`).
        On success the folder is renamed into place and the stage marked done with checksums.
        On an exception the stage is marked failed with its message and nothing is kept.
        """
        final = self.stage_dir(cell_id, stage)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        started = time.time()
        box = {"dir": tmp, "summary": {}}
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, 'running', ?, NULL, NULL, NULL, NULL)",
                       (cell_id, stage, started))
        try:
            yield box
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            import traceback
            err = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            with self._db() as db:
                db.execute("UPDATE stages SET status = 'failed', finished = ?, seconds = ?, error = ? "
                           "WHERE cell_id = ? AND stage = ?",
                           (time.time(), time.time() - started, err, cell_id, stage))
            raise
        files = [(p.relative_to(tmp).as_posix(), _sha256(p), p.stat().st_size)
                 for p in sorted(tmp.rglob("*")) if p.is_file()]
        if final.exists():  # left by a crash after rename but before the index was updated
            shutil.rmtree(final)
        os.replace(tmp, final)
        finished = time.time()
        with self._db() as db:
            db.execute("DELETE FROM files WHERE cell_id = ? AND stage = ?", (cell_id, stage))
            db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)",
                           [(cell_id, stage, r, h, s) for r, h, s in files])
            db.execute("UPDATE stages SET status = 'done', finished = ?, seconds = ?, summary = ?, error = NULL "
                       "WHERE cell_id = ? AND stage = ?",
                       (finished, finished - started, json.dumps(_jsonable(box["summary"])), cell_id, stage))
            db.execute("DELETE FROM meta WHERE key = ?", (_inputs_key(cell_id, stage),))
            if box.get("inputs") is not None:
                db.execute("INSERT INTO meta VALUES (?, ?)",
                           (_inputs_key(cell_id, stage), json.dumps(_jsonable(box["inputs"]), sort_keys=True)))

    def record_failure(self, cell_id: str, stage: str, error: str):
        """Record a stage that failed elsewhere (a Ray task) with its traceback."""
        now = time.time()
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, 'failed', ?, ?, 0, NULL, ?)",
                       (cell_id, stage, now, now, error))

    def failures(self) -> pd.DataFrame:
        df = self.stages()
        return df[df.status == "failed"][["cell_id", "stage", "error"]].reset_index(drop=True)

    def invalidate(self, cell_id: str, stage: str):
        """Forget a stage (for ``--force``): its folder, its resume data and index rows go."""
        with self._db() as db:
            db.execute("DELETE FROM stages WHERE cell_id = ? AND stage = ?", (cell_id, stage))
            db.execute("DELETE FROM files WHERE cell_id = ? AND stage = ?", (cell_id, stage))
            db.execute("DELETE FROM meta WHERE key = ?", (_inputs_key(cell_id, stage),))
        d = self.stage_dir(cell_id, stage)
        shutil.rmtree(d, ignore_errors=True)
        for p in self.resume_paths(cell_id, stage):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def inputs(self, cell_id: str, stage: str):
        """The config values a finished stage recorded as read (None when it recorded none:
        stages of run directories made before the record existed)."""
        return self.get_meta(_inputs_key(cell_id, stage))

    def stage_problems(self, cell_id: str, stage: str) -> list[str]:
        """What is wrong on disk with a finished stage: its folder missing, a file missing,
        altered or not in the index, a folder not in the index (empty when intact)."""
        rows = self._query("SELECT relpath, sha256, size FROM files WHERE cell_id = ? AND stage = ?",
                           (cell_id, stage))
        return self._folder_problems(cell_id, stage, rows)

    def _folder_problems(self, cid: str, stage: str, recorded) -> list[str]:
        d = self.stage_dir(cid, stage)
        if not d.is_dir():
            return [f"{cid}/{stage}: marked done but its folder is missing"]
        problems = []
        on_disk = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
        listed = {r for r, _, _ in recorded}
        for extra in sorted(on_disk - listed):
            problems.append(f"{cid}/{stage}/{extra}: file not in the index")
        for rel, sha, size in recorded:
            f = d / rel
            if not f.is_file():
                problems.append(f"{cid}/{stage}/{rel}: missing")
            elif f.stat().st_size != size or _sha256(f) != sha:
                problems.append(f"{cid}/{stage}/{rel}: checksum mismatch")
        return problems + [f"{cid}/{stage}/{rel}/: folder not in the index" for rel in _unlisted_folders(d, listed)]

    def resume_paths(self, cell_id: str, stage: str) -> list[Path]:
        """Resume data of a stage (:data:`RESUME_DATA`, and its temporaries): siblings of the
        stage folder that let a killed stage go on where it stopped. They are not results:
        ``verify`` does not check their content and ``invalidate`` removes them. Any other name
        (a user's ``train.bak/``) is left alone."""
        d = self.stage_dir(cell_id, stage)
        names = RESUME_DATA.get(stage, ())
        if not d.parent.is_dir():
            return []
        return sorted(p for p in d.parent.iterdir()
                      if p.name in names or (_is_temporary(p.name) and _TMP.sub("", p.name) in names))

    def clean_stale(self):
        """Remove temporary folders and files left by killed processes, and reset 'running' rows."""
        for p in list(self.path.rglob("*.tmp-*")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        with self._db() as db:
            db.execute("UPDATE stages SET status = 'interrupted' WHERE status = 'running'")

    def set_meta(self, key: str, value):
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(_jsonable(value))))

    def get_meta(self, key: str, default=None):
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return self._json(rows[0][0], f"meta value '{key}'") if rows else default

    # -- paths ------------------------------------------------------------------------------
    def inside(self, relpath) -> Path:
        """Resolve a path from a config value inside the run directory; refuse anything outside."""
        p = (self.path / relpath).resolve()
        if p != self.path and self.path not in p.parents:
            raise StoreError(f"path '{relpath}' points outside the run directory '{self.path}'; refused")
        return p

    # -- verification ---------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Check index against files: every done stage's files exist with their checksums, and
        the directory holds nothing else (an unknown file at the root or in a cell folder, a
        cell folder of no cell, a stray ``train.bak/``, an extra file or folder in a stage).

        Returns a list of problems (empty when consistent).
        """
        problems = []
        done = self._query("SELECT cell_id, stage FROM stages WHERE status = 'done'")
        recorded = {}
        for cid, stage, rel, sha, size in self._query("SELECT cell_id, stage, relpath, sha256, size FROM files"):
            recorded.setdefault((cid, stage), []).append((rel, sha, size))
        for cid, stage in done:
            problems += self._folder_problems(cid, stage, recorded.get((cid, stage), []))
        return problems + self._layout_problems({(c, s) for c, s in done})

    def _layout_problems(self, done: set) -> list[str]:
        """Everything in the run directory that is neither a file a run writes, a stage folder,
        resume data (:data:`RESUME_DATA`) nor a temporary of a killed process."""
        problems = []
        for p in sorted(self.path.iterdir()):
            if p.name in ("cells", "run") and p.is_dir() or p.name in _ROOT_FILES and p.is_file():
                continue
            if not _is_temporary(p.name):
                problems.append(f"{p.name}{'/' if p.is_dir() else ''}: not part of a run directory "
                                "(unknown file at its root)")
        cells = self.path / "cells"
        known = {r[0] for r in self._query("SELECT cell_id FROM cells")}
        folders = [(RUN_LEVEL, self.path / "run")]
        for p in sorted(cells.iterdir()) if cells.is_dir() else []:
            if p.is_dir() and p.name in known:
                folders.append((p.name, p))
            elif not _is_temporary(p.name):
                problems.append(f"cells/{p.name}{'/' if p.is_dir() else ''}: "
                                + ("folder of no cell in the index" if p.is_dir() else "file not in the index"))
        resume = {n for names in RESUME_DATA.values() for n in names}
        for cid, folder in folders:
            for p in sorted(folder.iterdir()) if folder.is_dir() else []:
                if p.name in resume or _is_temporary(p.name) or (cid, p.name) in done:
                    continue
                if p.is_dir() and "." not in p.name:  # stage names hold no dot
                    problems.append(f"{cid}/{p.name}: folder without a finished stage in the index")
                else:
                    problems.append(f"{cid}/{p.name}{'/' if p.is_dir() else ''}: "
                                    f"{'folder' if p.is_dir() else 'file'} not in the index "
                                    "(neither a stage's results nor its resume data)")
        return problems


def _unlisted_folders(d: Path, listed: set[str]) -> list[str]:
    """Sub-folders of a stage folder ``d`` that hold none of its ``listed`` files."""
    holding = {str(Path(r).parent) for r in listed} - {"."}
    holding |= {str(parent) for h in holding for parent in Path(h).parents} - {"."}
    return sorted(rel for rel in (p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_dir())
                  if rel not in holding)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def write_table(df: pd.DataFrame, path_without_suffix, parquet: bool = True):
    """Write a table as CSV (and Parquet), atomically."""
    p = Path(path_without_suffix)
    atomic_write_text(p.with_suffix(".csv"), df.to_csv(index=False))
    if parquet:
        with atomic_path(p.with_suffix(".parquet")) as tmp:
            df.to_parquet(tmp, index=False)
