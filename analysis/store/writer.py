"""Committing a scan's finished layers from a thread of their own, so the scan never waits for the disk."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import LayerResult, ScanContext
from analysis.store.runs import FoundScan, RunStore, ScanRun
from analysis.workload.workload import Workload


class LayerWriter:
    """Writes a scan's run from one thread of its own.

    ``look_up`` finds the run to resume before the scan is prepared (a foreign store fails before any work);
    ``attach`` resumes it or queues the creation of a new run; then the writer is the scan's ``on_result`` sink:
    a finished layer is committed while the next one is computed. Handing over a layer first waits for the
    previous commit, so at most one finished layer is ever uncommitted: a SIGKILL loses at most the layer being
    computed and the one being committed. ``finish`` queues the run's closing row (and, with ``close_store``,
    the store's close and checkpoint); ``close`` waits for all of it and raises any error the writer met (an
    error also surfaces at the next hand-over).
    """

    def __init__(self, store: RunStore, run_id: int | None, config: ScanConfig) -> None:
        self.store, self.config = store, config
        self._run_id = run_id
        self._found: FoundScan | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunescope-store")
        self._pending: Future | None = None
        self.committed: set[str] = set()  # layers this run holds in the store: resumed, or committed here

    @classmethod
    def start(cls, workload: Workload, config: ScanConfig, fresh: bool = False,
              path: str | Path | None = None) -> "LayerWriter":
        """A writer for this scan on the store at ``path`` (default ``$PRUNESCOPE_HOME/runs.sqlite``), which it opens
        and looks the scan up in at once (so a foreign store fails before the scan is prepared)."""
        writer = cls(RunStore(path), None, config)
        try:
            writer.look_up(workload, fresh)
        except BaseException:
            writer.close(discard_errors=True)
            writer.store.close()
            raise
        return writer

    def look_up(self, workload: Workload, fresh: bool = False) -> FoundScan:
        """Find this scan's run in the store (done here, not in the thread: a thread that starts with Python work
        holds the interpreter lock for milliseconds while the caller waits)."""
        self._found = self.store.find_scan(workload, self.config, fresh)
        return self._found

    def attach(self, workload: Workload, ctx: ScanContext) -> ScanRun | None:
        """The run this scan resumes, or ``None`` when it starts a new run (its creation is queued, not awaited)."""
        found = self._found or self.look_up(workload)
        run = found.resumed(ctx) if found.run_id is not None else None
        if run is not None:
            self._run_id = found.run_id
            self.committed.update(run.done)
            return run

        def create() -> None:
            self._run_id = self.store.create_scan(workload, ctx, found.key, found.identity, found.seen)

        self._submit(create)
        return None

    @property
    def run_id(self) -> int:
        """The run's id (waits for its creation when that is still queued)."""
        if self._run_id is None:
            self._wait()
        return self._run_id

    def __call__(self, result: LayerResult) -> None:
        def commit() -> None:
            self.store.add_layer(self._run_id, result, self.config)
            self.committed.add(result.layer)

        self._submit(commit)

    def committed_layers(self) -> int:
        """How many finished layers the store holds for this run, once the commit in flight has ended (a commit
        that failed, say on a full disk, is not counted): what a message may promise is kept."""
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - the failed commit is not counted; its error is on its way out already
            pass
        return len(self.committed)

    def finish(self, meta: dict, close_store: bool = False) -> None:
        """Queue ``RunStore.finish`` (and ``RunStore.close`` with ``close_store``) behind the last layer."""

        def work() -> None:
            self.store.finish(self._run_id, meta)
            if close_store:
                self.store.close()

        self._submit(work)

    def close(self, discard_errors: bool = False) -> None:
        """Wait until everything handed over is committed; raise the writer's error, if any (unless
        ``discard_errors``: when another error is on its way out already)."""
        try:
            self._wait()
        except Exception:
            if not discard_errors:
                raise
        finally:
            self._pool.shutdown(wait=True)

    def _submit(self, fn) -> None:  # noqa: ANN001 - a job without arguments
        self._wait()
        self._pending = self._pool.submit(fn)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "LayerWriter":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(discard_errors=exc_type is not None)
