"""The run store: one SQLite file (``$PRUNESCOPE_HOME/runs.sqlite``) that keeps every result as it is produced.

A scan is a *run*: its full configuration, and one row per finished layer, committed in its own transaction
the moment the layer finishes, so a killed process loses at most the layer in flight (``LayerWriter`` commits
from a thread while the next layer runs, so the scan never waits for the disk; at most one finished layer is
uncommitted at any moment). Starting the same scan again finds the run by its identity and resumes it; the scan
is pure (``sensitivity.scan`` takes the units already done and a sink for each new one), so the store is only a
source and a sink of ``LayerResult`` units.

A run's identity is what decides its numbers: the model's weights (a hash), the eval data (a hash), the
criterion, granularity, sparsities, selected layers, seed, calibration size, BatchNorm recalibration, and any
setting added later. How the numbers are computed
is *not* part of it: the engine, device and batch size must not change a result (the engines are tested to
agree), so a scan started with one engine resumes with another. Each layer row records which engine, device
and batch size produced it, and the run records the versions it started under.

Schedules, diagnostics and exports are stored beside runs as *artifacts* (``save_artifact``): a kind, a name,
an optional run they came from, and a JSON or bytes payload.

The file is opened in WAL mode with a busy timeout, so dashboard sessions and CLI scans can write at the same
time. A file that is not an SQLite database, belongs to another program, or is damaged where opening looks
(header, schema, the root page of every table and index: checks that do not grow with the store) raises
``StoreError`` before anything is written to it; damage deeper in the file raises ``StoreError`` when a query
reaches it, and ``RunStore.check`` (``prunescope runs check``) reads the whole file on demand.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from analysis.core.layers import Layer
from analysis.core.metrics import Sums
from analysis.core.profile import SensitivityProfile
from analysis.core.version import environment
from analysis.sensitivity.config import ScanConfig, left_out_of_identity
from analysis.sensitivity.context import LayerResult, ScanContext, combine_shards
from analysis.sensitivity.driver import describe, profile_table
from analysis.workload.workload import Workload

APPLICATION_ID = 0x50525343  # "PRSC": marks the file as a Prunescope store
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
SQLITE_HEADER = b"SQLite format 3\x00"
_TABLES = {"runs", "layers", "artifacts"}
EXECUTION_FIELDS = ("engine", "device", "batch_size")  # how numbers are computed, not which: not in the identity
LATER_FIELDS = {"include_embeddings": False}  # settings added later: at their default, runs keep their identity

_SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'scan',
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    model_fp TEXT NOT NULL,
    data_fp TEXT NOT NULL,
    identity TEXT NOT NULL,
    total_layers INTEGER NOT NULL,
    meta TEXT NOT NULL
);
CREATE INDEX runs_key ON runs (key);
CREATE TABLE layers (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    layer TEXT NOT NULL,
    shard_lo INTEGER NOT NULL,
    shard_hi INTEGER NOT NULL,
    result TEXT NOT NULL,
    engine TEXT NOT NULL,
    device TEXT NOT NULL,
    batch_size INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, layer, shard_lo, shard_hi)
);
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    run_id INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    encoding TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX artifacts_kind ON artifacts (kind);
"""


class StoreError(ValueError):
    """The store file cannot be used (damaged, foreign, or locked for too long), or a run or artifact is unknown."""


def home() -> Path:
    """``$PRUNESCOPE_HOME``, default ``~/.prunescope``: where the run store and results live."""
    return Path(os.environ.get("PRUNESCOPE_HOME") or Path.home() / ".prunescope").expanduser()


def default_path() -> Path:
    return home() / "runs.sqlite"


@dataclass
class FoundScan:
    """What ``RunStore.find_scan`` found: the scan's identity, the run to resume (``run_id`` None: none) and the
    newest run of this identity at the time (``seen``, even with ``fresh``: a run newer than it was started by
    another process meanwhile, and ``create_scan`` joins it)."""

    key: str
    identity: dict
    run_id: int | None
    done: dict[str, LayerResult]
    seen: int = 0

    def resumed(self, ctx: ScanContext) -> "ScanRun | None":
        """The run to resume, or ``None`` when its dense outputs are not this model's (code that changed where
        the identity cannot see it, such as a module the model file imports): then the scan starts a new run."""
        known = {l.name for l in ctx.layers}
        done = {k: v for k, v in self.done.items() if k in known}
        whole = [r for r in done.values() if tuple(r.shard) == (0, len(ctx.x))]  # not a shard of the eval set
        stored = next((row for r in whole for row in r.rows if row["sparsity"] == 0.0), None)
        if stored is not None and not _same_baseline(Sums.from_dict(stored), ctx.baseline()):
            ctx.notices.append(f"run {self.run_id} has this scan's weights and settings but other dense outputs "
                               "(did the model's code change?); it is kept, and this scan starts a new run")
            return None
        return ScanRun(self.run_id, done, len(ctx.layers), True)


def _same_baseline(stored: Sums, now: Sums) -> bool:
    """Whether two dense baselines are the same model's on the same data: the same count, and a mean loss equal
    up to what another engine, device or batch size changes (1e-4 relative)."""
    if stored.n != now.n or stored.n == 0:
        return stored.n == now.n
    a, b = stored.loss_sum / stored.n, now.loss_sum / now.n
    return abs(a - b) <= 1e-4 * max(abs(a), abs(b), 1e-3)


@dataclass
class ScanRun:
    """A run opened for a scan: its id, the units already finished, and whether it was resumed."""

    id: int
    done: dict[str, LayerResult]
    total_layers: int
    resumed: bool


def scan_identity(workload: Workload, config: ScanConfig) -> dict:
    """What decides a scan's numbers: weights, data, and every setting but the engine, device and batch size.

    A setting added to ``ScanConfig`` later is part of the identity unless named in ``EXECUTION_FIELDS``: at
    worst a scan then starts a new run instead of resuming, never resumes a run whose numbers differ.
    """
    config = config.validated()
    off = left_out_of_identity(config)  # full scans keep the identity they had before adaptive and sequential modes
    settings = {k: v for k, v in asdict(config).items() if k not in EXECUTION_FIELDS and k not in off
                and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    settings["sparsities"] = list(settings["sparsities"])
    settings["layers"] = list(settings["layers"]) if settings["layers"] else None
    return {"model_fp": workload.fingerprint(), "data_fp": workload.data.fingerprint(), **settings}


def identity_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


class RunStore:
    """The run store at ``path`` (default ``$PRUNESCOPE_HOME/runs.sqlite``), created on first use."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.RLock()
        self._check_file()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                        check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the run store {self.path}: {exc}") from None
        try:
            self._open()
        except sqlite3.OperationalError as exc:
            self.conn.close()
            raise StoreError(f"cannot open the run store {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreError(f"the run store {self.path} is damaged ({exc}); move it away (nothing was written "
                             "to it) and Prunescope starts a new one") from None
        except StoreError:
            self.conn.close()
            raise

    # ------------------------------------------------------------------------------------------- opening

    def _check_file(self) -> None:
        """Refuse a file that is not an SQLite database before SQLite touches it."""
        if self.path.is_dir():
            raise StoreError(f"the run store {self.path} is a folder, not a file")
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
        if head != SQLITE_HEADER:
            raise StoreError(f"{self.path} is not a Prunescope run store (not an SQLite database); move it away or "
                             "set PRUNESCOPE_HOME to another folder. Nothing was written to it")

    def _open(self) -> None:
        """Cheap checks that do not grow with the store: the file is ours, of a schema we know, and the root page
        of every table and index reads. Damage deeper in the file surfaces as a ``StoreError`` when a query
        reaches it; ``check()`` (``prunescope runs check``) reads the whole file. Four statements in all: opening
        is on every scan's path."""
        c = self.conn
        trees = c.execute("SELECT type, name, tbl_name, application_id, user_version FROM pragma_application_id, "
                          "pragma_user_version LEFT JOIN sqlite_master ON type IN ('table', 'index')").fetchall()
        app_id, version = trees[0][3:]
        trees = [t[:3] for t in trees if t[0] is not None]
        tables = {name for kind, name, _ in trees if kind == "table"}
        if tables and app_id != APPLICATION_ID:
            raise StoreError(f"{self.path} is an SQLite database of another program (tables: "
                             f"{', '.join(sorted(tables)[:5])}); Prunescope will not write to it. Move it away or "
                             "set PRUNESCOPE_HOME to another folder")
        if tables:
            if version > SCHEMA_VERSION:
                raise StoreError(f"the run store {self.path} was written by a newer Prunescope (schema {version}); "
                                 "upgrade Prunescope to read it")
            missing = sorted(_TABLES - tables)
            if missing:
                raise sqlite3.DatabaseError(f"table {', '.join(missing)} missing")
            reads = (f'(SELECT 1 FROM "{table}"' + (f' INDEXED BY "{name}"' if kind == "index" else "") + " LIMIT 1)"
                     for kind, name, table in trees)
            c.execute(f"SELECT {', '.join(reads)}").fetchall()
        c.executescript(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}; PRAGMA journal_mode = WAL; "
                        "PRAGMA synchronous = NORMAL;")
        if tables and "sqlite_sequence" not in tables:
            self._migrate_autoincrement()
        c.execute("PRAGMA foreign_keys = ON")
        if not tables:
            with self._write():
                if not c.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            c.execute(statement)
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_autoincrement(self) -> None:
        """Give a store written before run ids were never reused an AUTOINCREMENT ``runs`` table, keeping every run.

        SQLite cannot add AUTOINCREMENT to a table, so the table is rebuilt in one transaction (foreign keys off,
        so the layers of the runs are not cascaded away while the old table is dropped).
        """
        runs_sql = _SCHEMA.split(";")[0].replace("CREATE TABLE runs", "CREATE TABLE runs_new")
        with self._write() as c:
            if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
                return  # another process migrated it first
            columns = ", ".join(row[1] for row in c.execute("PRAGMA table_info(runs)").fetchall())
            c.execute(runs_sql)
            c.execute(f"INSERT INTO runs_new ({columns}) SELECT {columns} FROM runs")
            c.execute("DROP TABLE runs")
            c.execute("ALTER TABLE runs_new RENAME TO runs")
            c.execute(_SCHEMA.split(";")[1])

    def check(self) -> list[str]:
        """Read the whole file (SQLite's ``integrity_check``): the problems found, ``[]`` when the store is sound.

        Opening a store only checks what does not grow with it; this is the full check, on demand.
        """
        try:
            with self._lock:
                rows = self.conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot check the run store {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        problems = [r[0] for r in rows]
        return [] if problems == ["ok"] else problems

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """SQLite's errors on a store that opened fine (damage deeper in the file, a full disk) as ``StoreError``."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot use the run store {self.path}: {exc}") from None
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"the run store {self.path} refused a write ({exc}): was the run deleted?") from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the run store {self.path} is damaged ({exc}); `prunescope runs check` lists the "
                             "damage. Move it away and Prunescope starts a new one") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock at once (no deadlock between readers that upgrade).

        One ``RunStore`` may be shared by threads (a dashboard's sessions): a lock keeps their transactions apart.
        """
        with self._lock, self._sqlite_errors():
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"the run store {self.path} stayed locked for {BUSY_TIMEOUT_S:.0f} s: {exc}") from None
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        with self._lock, self._sqlite_errors():
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------- scans

    def open_scan(self, workload: Workload, ctx: ScanContext, fresh: bool = False) -> ScanRun:
        """The run of this scan: the latest with the same identity (resumed), or a new one when none or ``fresh``."""
        found = self.find_scan(workload, ctx.config, fresh)
        run = found.resumed(ctx) if found.run_id is not None else None
        if run is not None:
            return run
        return ScanRun(self.create_scan(workload, ctx, found.key, found.identity, found.seen), {}, len(ctx.layers),
                       False)

    def find_scan(self, workload: Workload, config: ScanConfig, fresh: bool = False) -> "FoundScan":
        """The reading half of ``open_scan`` (writes nothing, needs no prepared scan): the run to resume and its
        finished layers, or none (``fresh``, or no run of this identity yet)."""
        identity = scan_identity(workload, config)
        key = identity_key(identity)
        rows = self._query("SELECT id FROM runs WHERE key = ? ORDER BY id DESC LIMIT 1", (key,))
        seen = rows[0][0] if rows else 0
        run_id = None if fresh or not rows else seen
        return FoundScan(key, identity, run_id, self.done(run_id) if run_id is not None else {}, seen)

    def create_scan(self, workload: Workload, ctx: ScanContext, key: str, identity: dict, seen: int = 0) -> int:
        """Insert a new run for this scan (``find_scan`` gives ``key``, ``identity`` and ``seen``); returns its id.

        When a run of this identity newer than ``seen`` exists (the same scan started by another process since the
        lookup), that run's id is returned instead: the two processes share one run, and since their results are
        the same numbers, a layer committed by both is one row."""
        meta = _run_meta(workload, ctx)
        now = time.time()
        with self._write() as c:
            joined = c.execute("SELECT id FROM runs WHERE key = ? AND id > ? ORDER BY id LIMIT 1",
                               (key, seen)).fetchone()
            if joined:
                return joined[0]
            cur = c.execute(
                "INSERT INTO runs (key, kind, status, created, updated, model, data, model_fp, data_fp, identity, "
                "total_layers, meta) VALUES (?, 'scan', 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, now, now, workload.model_spec, workload.data.spec, identity["model_fp"], identity["data_fp"],
                 json.dumps(identity), len(ctx.layers), json.dumps(meta, default=str)))
        return cur.lastrowid

    def latest_scan(self, workload: Workload, config: ScanConfig) -> int | None:
        """The newest run with this scan's identity (whatever its status), or ``None``: what ``open_scan`` resumes,
        found without preparing the scan (so a finished run reopens without touching the model)."""
        rows = self._query("SELECT id FROM runs WHERE key = ? ORDER BY id DESC LIMIT 1",
                           (identity_key(scan_identity(workload, config)),))
        return rows[0][0] if rows else None

    def add_layer(self, run_id: int, result: LayerResult, config: ScanConfig | None = None) -> None:
        """Commit one finished unit (its own transaction): after this returns, a crash cannot lose it."""
        config = config or ScanConfig()
        now = time.time()
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (run_id, result.layer, result.shard[0], result.shard[1], json.dumps(result.to_dict()),
                       config.engine, config.device, config.batch_size, now))
            c.execute("UPDATE runs SET updated = ? WHERE id = ?", (now, run_id))

    def done(self, run_id: int) -> dict[str, LayerResult]:
        """The finished units of a run, by layer name (shards of one layer summed into one result)."""
        self._run_row(run_id)
        results: dict[str, LayerResult] = {}
        for (text,) in self._query("SELECT result FROM layers WHERE run_id = ? ORDER BY rowid", (run_id,)):
            r = LayerResult.from_dict(json.loads(text))
            results[r.layer] = _merge(results[r.layer], r) if r.layer in results else r
        return results

    def finish(self, run_id: int, meta: dict) -> None:
        """Mark a run complete (or stopped, if ``meta['complete']`` is false) and keep the profile's metadata."""
        status = "complete" if meta.get("complete", True) else "stopped"
        with self._write() as c:
            c.execute("UPDATE runs SET status = ?, updated = ?, meta = ? WHERE id = ?",
                      (status, time.time(), json.dumps(meta, default=str), run_id))

    def _run_row(self, run_id: int) -> dict:
        with self._lock, self._sqlite_errors():
            cur = self.conn.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        if row is None:
            raise StoreError(f"there is no run {run_id} in {self.path}; `prunescope runs list` shows the runs")
        return dict(zip(names, row))

    def run(self, run_id: int) -> dict:
        """One run: its configuration, status, progress and the metadata of its profile."""
        row = self._run_row(run_id)
        n_done = self._query("SELECT COUNT(DISTINCT layer) FROM layers WHERE run_id = ?", (int(run_id),))[0][0]
        return {**{k: v for k, v in row.items() if k not in ("identity", "meta")},
                "identity": json.loads(row["identity"]), "meta": json.loads(row["meta"]), "done_layers": n_done}

    def runs(self, model_fp: str | None = None, data_fp: str | None = None) -> pd.DataFrame:
        """Every run, newest first: id, status, layers done of total, model, data and pruning settings.

        ``model_fp`` and ``data_fp`` keep only the runs of those weights and that eval data (``Workload.fingerprint``,
        ``EvalData.fingerprint``), whatever file or spec they were loaded from.
        """
        where, params = [], []
        for column, value in (("model_fp", model_fp), ("data_fp", data_fp)):
            if value is not None:
                where.append(f"r.{column} = ?")
                params.append(value)
        rows = self._query(
            "SELECT r.id, r.status, (SELECT COUNT(DISTINCT layer) FROM layers l WHERE l.run_id = r.id), "
            "r.total_layers, r.model, r.data, r.identity, r.created FROM runs r"
            + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY r.id DESC", params)
        records = []
        for run_id, status, n_done, total, model, data, identity, created in rows:
            ident = json.loads(identity)
            records.append({"id": run_id, "status": status, "layers_done": n_done, "layers": total, "model": model,
                            "data": data, "criterion": ident["criterion"], "granularity": ident["granularity"],
                            "sparsities": len(ident["sparsities"]), "grid": _grid_text(ident["sparsities"]),
                            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))})
        return pd.DataFrame.from_records(records, columns=[
            "id", "status", "layers_done", "layers", "model", "data", "criterion", "granularity", "sparsities",
            "grid", "created"])

    def profile(self, run_id: int) -> SensitivityProfile:
        """The profile of a run from the store alone (no model needed): finished layers so far."""
        meta = self.run(run_id)["meta"]
        results = self.done(run_id)
        layers = [Layer.from_meta(d) for d in meta["layers"]]
        dense = next((row for r in results.values() for row in r.rows if row["sparsity"] == 0.0), None)
        baseline = meta.get("baseline") or (Sums.from_dict(dense).metrics() if dense else None)
        merged = {**meta, "complete": all(l.name in results for l in layers), "baseline": baseline,
                  "run_id": int(run_id)}
        return SensitivityProfile(profile_table(layers, results), merged).with_confidence()

    def delete_run(self, run_id: int) -> None:
        """Delete a run, its finished layers and the artifacts made from it (run ids are never reused)."""
        self._run_row(run_id)
        with self._write() as c:
            c.execute("DELETE FROM artifacts WHERE run_id = ?", (int(run_id),))
            c.execute("DELETE FROM runs WHERE id = ?", (int(run_id),))

    # ------------------------------------------------------------------------------------------- artifacts

    def save_artifact(self, kind: str, name: str, payload: object, run_id: int | None = None) -> int:
        """Store a schedule, diagnostic, export or other result; ``payload`` is JSON-serialisable data or bytes.

        Returns the artifact's id.
        """
        if not isinstance(kind, str) or not kind.strip():
            raise StoreError(f"an artifact needs a non-empty kind, got {kind!r}")
        if not isinstance(name, str) or not name.strip():
            raise StoreError(f"an artifact needs a non-empty name, got {name!r}")
        if run_id is not None:
            self._run_row(run_id)
        if isinstance(payload, (bytes, bytearray, memoryview)):
            encoding, blob = "bytes", bytes(payload)
        else:
            try:
                encoding, blob = "json", json.dumps(payload, allow_nan=True).encode()
            except (TypeError, ValueError) as exc:
                raise StoreError(f"artifact {kind}/{name}: payload must be JSON data or bytes ({exc})") from None
        with self._write() as c:
            cur = c.execute("INSERT INTO artifacts (kind, name, run_id, encoding, payload, created) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (kind, name, run_id, encoding, blob, time.time()))
        return cur.lastrowid

    def artifacts(self, kind: str | None = None, run_id: int | None = None) -> pd.DataFrame:
        """Stored artifacts, newest first (id, kind, name, run_id, encoding, size, created); no payloads."""
        query = "SELECT id, kind, name, run_id, encoding, LENGTH(payload), created FROM artifacts"
        where, params = [], []
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if run_id is not None:
            where.append("run_id = ?")
            params.append(int(run_id))
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = self._query(query + " ORDER BY id DESC", params)
        df = pd.DataFrame(rows, columns=["id", "kind", "name", "run_id", "encoding", "size", "created"])
        df["run_id"] = df["run_id"].astype("Int64")
        df["created"] = [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) for t in df["created"]]
        return df

    def get_artifact(self, artifact_id: int) -> tuple[dict, object]:
        """``(info, payload)`` of one artifact: the payload as saved (JSON data or bytes)."""
        rows = self._query("SELECT id, kind, name, run_id, encoding, payload, created FROM artifacts WHERE id = ?",
                           (int(artifact_id),))
        if not rows:
            raise StoreError(f"there is no artifact {artifact_id} in {self.path}; `prunescope runs artifacts` "
                             "lists them")
        art_id, kind, name, run_id, encoding, blob, created = rows[0]
        payload = bytes(blob) if encoding == "bytes" else json.loads(bytes(blob).decode())
        return {"id": art_id, "kind": kind, "name": name, "run_id": run_id, "encoding": encoding,
                "created": created}, payload

    def delete_artifact(self, artifact_id: int) -> None:
        self.get_artifact(artifact_id)
        with self._write() as c:
            c.execute("DELETE FROM artifacts WHERE id = ?", (int(artifact_id),))


def _grid_text(sparsities: list[float]) -> str:
    """A sparsity grid in a table cell: ``0,0.5,0.9``, or ``0..0.99 (100)`` when long."""
    if len(sparsities) <= 6:
        return ",".join(f"{s:g}" for s in sparsities)
    return f"{min(sparsities):g}..{max(sparsities):g} ({len(sparsities)})"


def _run_meta(workload: Workload, ctx: ScanContext) -> dict:
    """What a run records when it starts (the finished profile's ``scan.json`` replaces it at the end).

    The dense baseline is not computed here: every finished layer carries it as its sparsity-0 row.
    """

    return {
        **describe(workload, ctx),
        "complete": False,
        "versions": environment(),
    }


def _merge(a: LayerResult, b: LayerResult) -> LayerResult:
    """Two stored units of one layer as one result: the same shard stored twice (two processes ran it) is one,
    adjacent shards add up exactly."""
    return b if a.shard == b.shard else combine_shards([a, b])
