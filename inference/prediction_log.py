"""The prediction log: one PredictionLog row per prediction attempt, written without costing the
request a database round trip.

`record()` builds the row's values on the caller's thread (hashing the body is the only real
work) and appends them to this process's queue; a daemon thread writes the queue with
`bulk_create`, up to BATCH_SIZE rows per INSERT, every PREDICTION_LOG_FLUSH_SECONDS or as soon as
a batch is full. `flush()` writes what is queued synchronously, from any thread: when the process
ends (interpreter exit, or the end of a multiprocessing child such as a granian worker), in
gunicorn's `worker_exit` hook (deploy/gunicorn.conf.py), and in tests. So a clean stop loses no
rows; a killed process loses at most the rows it had not flushed yet.

While the database is unavailable rows stay queued for the next try, at most
PREDICTION_LOG_MAX_PENDING of them; beyond that the oldest are dropped, and counted in a warning.
Rows carry their id (a UUID chosen by `record()`), so writing one twice is harmless.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing.util
import os
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

from django.conf import settings
from django.db import (
    DataError,
    IntegrityError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import Aggregate, Avg, Count, FloatField, Q, Sum
from django.utils import timezone

from inference.models import PredictionLog

logger = logging.getLogger(__name__)

# Rows per INSERT: large enough to make a busy second one statement, small enough to stay quick.
BATCH_SIZE = 500
# Rows per DELETE when pruning, so no statement holds its locks for long.
PRUNE_BATCH_SIZE = 10_000
# Errors about the rows themselves rather than the database: retrying would fail forever.
ROW_ERRORS = (DataError, IntegrityError, ValueError)

# Longest value each text column takes; longer ones are cut rather than refused by the database.
_MAX_LENGTHS = {
    field.name: field.max_length
    for field in PredictionLog._meta.concrete_fields
    if getattr(field, "max_length", None)
}


def record(
    *,
    caller_kind: str,
    caller_label: str,
    model_id: str,
    model_version: str | None,
    rows: int | None,
    latency_ms: float,
    status: int,
    error_code: str | None,
    request_id: str | None,
    body: bytes,
    created_at: datetime | None = None,
    log_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Queues the log row of one prediction attempt and returns its id, without touching the
    database. `created_at` defaults to when the request started (now minus `latency_ms`);
    `log_id` is for a caller that already promised an id to its response."""
    log_id = log_id or uuid.uuid4()
    if created_at is None:
        created_at = timezone.now() - timedelta(milliseconds=latency_ms)
    body = body or b""
    payload = ""
    if settings.HOKUSAI_LOG_PREDICTION_PAYLOADS:
        # PostgreSQL text cannot hold NUL characters.
        payload = body.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    values = {
        "id": log_id,
        "created_at": created_at,
        "caller_kind": caller_kind,
        "caller_label": (caller_label or "")[: _MAX_LENGTHS["caller_label"]],
        "model_id": (model_id or "")[: _MAX_LENGTHS["model_id"]],
        "model_version": str(model_version or "")[: _MAX_LENGTHS["model_version"]],
        "rows": rows,
        "latency_ms": latency_ms,
        "status": status,
        "error_code": (error_code or "")[: _MAX_LENGTHS["error_code"]],
        "request_id": (request_id or "")[: _MAX_LENGTHS["request_id"]],
        "input_sha256": hashlib.sha256(body).hexdigest(),
        "payload": payload,
    }
    _writer(start=True).put(values)
    return log_id


def flush(timeout: float = 10.0) -> int:
    """Writes every row queued in this process so far, on the calling thread, first waiting for
    a write the background thread has under way; returns how many rows this call wrote. Gives
    up after about `timeout` seconds or a database error; rows not written stay queued."""
    return _writer(start=False).flush(timeout)


def prune(older_than_days: int | None = None) -> int:
    """Deletes rows older than PREDICTION_LOG_RETENTION_DAYS (or `older_than_days`), a batch per
    statement; returns how many were deleted."""
    days = settings.PREDICTION_LOG_RETENTION_DAYS if older_than_days is None else older_than_days
    cutoff = timezone.now() - timedelta(days=days)
    deleted = 0
    while True:
        batch = PredictionLog.objects.filter(created_at__lt=cutoff).values("pk")[:PRUNE_BATCH_SIZE]
        count, _ = PredictionLog.objects.filter(pk__in=batch).delete()
        deleted += count
        if count < PRUNE_BATCH_SIZE:
            return deleted


# --- Usage -------------------------------------------------------------------------------------


class _Median(Aggregate):
    """PostgreSQL's median; the embedded SQLite database has none (the usage page shows —)."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


def _figures() -> dict[str, Any]:
    figures = {
        "requests": Count("pk"),
        "errors": Count("pk", filter=Q(status__gte=400)),
        "rows": Sum("rows"),
        "mean_latency_ms": Avg("latency_ms"),
    }
    if connection.vendor == "postgresql":
        figures["p50_latency_ms"] = _Median("latency_ms")
    return figures


def usage(since: datetime, *, caller_limit: int = 100) -> dict[str, Any]:
    """Predictions since `since`, per model and per caller (the `caller_limit` busiest): counts,
    errors (status 400 and above), rows predicted, mean and median latency. One query each."""
    recent = PredictionLog.objects.filter(created_at__gte=since).order_by()
    by_model = list(
        recent.values("model_id").annotate(**_figures()).order_by("-requests", "model_id")
    )
    by_caller = list(
        recent.values("caller_kind", "caller_label")
        .annotate(**_figures())
        .order_by("-requests", "caller_kind", "caller_label")[: caller_limit + 1]
    )
    return {
        "since": since,
        "requests": sum(group["requests"] for group in by_model),
        "errors": sum(group["errors"] for group in by_model),
        "by_model": by_model,
        "by_caller": by_caller[:caller_limit],
        # More callers than `caller_limit` were busy: the quieter ones are left out.
        "more_callers": len(by_caller) > caller_limit,
    }


# --- The writer ----------------------------------------------------------------------------------


class _Writer:
    """One process's queue of rows and the daemon thread that writes it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pending: deque[dict[str, Any]] = deque()
        self.pending_lock = threading.Lock()
        # One batch is written at a time, so a flush waits for the thread's write in progress.
        self.write_lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.dropped = 0
        self.stopping = False

    def start(self) -> None:
        with self.pending_lock:
            if self.thread is not None:
                return
            self.thread = threading.Thread(
                target=self._run, name="prediction-log-writer", daemon=True
            )
        self.thread.start()

    def put(self, values: dict[str, Any]) -> None:
        with self.pending_lock:
            self.pending.append(values)
            self._trim()
            full = len(self.pending) >= BATCH_SIZE
        if full and not self.wake.is_set():
            self.wake.set()

    def _trim(self) -> None:
        """Drops the oldest rows beyond PREDICTION_LOG_MAX_PENDING (with pending_lock held)."""
        excess = len(self.pending) - settings.PREDICTION_LOG_MAX_PENDING
        for _ in range(max(excess, 0)):
            self.pending.popleft()
        self.dropped += max(excess, 0)

    def _run(self) -> None:
        while not self.stopping:
            interval = settings.PREDICTION_LOG_FLUSH_SECONDS
            self.wake.wait(interval)
            self.wake.clear()
            try:
                failed = self._write_queued()
            except Exception:
                # Whatever went wrong, this thread must live on: it is the only writer.
                logger.exception("prediction log: the writer failed; it goes on")
                failed = True
            if failed:
                # The database is failing: try again after a full interval, not at once.
                time.sleep(interval)

    def _write_queued(self) -> bool:
        """One round of the thread: writes the queue; True if the database failed. This thread
        serves no requests, so it looks after its own connection as Django does around one."""
        if self.stopping or not self.pending:
            # Idle: hold no connection until rows come again.
            connection.close()
            return False
        close_old_connections()
        # Only the rows queued so far: under steady load, chasing the rows that arrive while
        # this round writes would keep the thread writing tiny batches without a pause.
        with self.pending_lock:
            due = len(self.pending)
        try:
            while due > 0:
                with self.write_lock:
                    taken, _, failed = self._write_batch()
                if failed or not taken:
                    return failed
                due -= taken
            return False
        finally:
            close_old_connections()

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        written = 0
        while True:
            with self.pending_lock:
                empty = not self.pending
            # Nothing queued and no write under way: nothing to wait for, no database needed.
            if empty and not self.write_lock.locked():
                return written
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.write_lock.acquire(timeout=remaining):
                logger.warning(
                    "prediction log: flush gave up after %.1f s with %d rows queued",
                    timeout,
                    len(self.pending),
                )
                return written
            try:
                taken, batch_written, failed = self._write_batch()
            finally:
                self.write_lock.release()
            written += batch_written
            if failed or not taken:
                return written

    def _write_batch(self) -> tuple[int, int, bool]:
        """Writes up to BATCH_SIZE of the oldest queued rows (with write_lock held). Returns
        (rows taken from the queue, rows written, whether the database failed); on a failure the
        rows not written go back to the front of the queue."""
        self._report_dropped()
        with self.pending_lock:
            batch = [self.pending.popleft() for _ in range(min(BATCH_SIZE, len(self.pending)))]
        if not batch:
            return 0, 0, False
        try:
            _insert(batch)
            return len(batch), len(batch), False
        except ROW_ERRORS:
            # Some row the database refuses: write the others one by one, drop that one.
            pass
        except Exception:
            self._put_back(batch)
            logger.warning(
                "prediction log: could not write %d rows, kept for the next try",
                len(self.pending),
                exc_info=True,
            )
            return len(batch), 0, True
        written = 0
        for index, values in enumerate(batch):
            try:
                _insert([values])
                written += 1
            except ROW_ERRORS:
                logger.exception(
                    "prediction log: dropped row %s, the database refuses it", values["id"]
                )
            except Exception:
                self._put_back(batch[index:])
                logger.warning(
                    "prediction log: could not write rows, kept for the next try", exc_info=True
                )
                return index, written, True
        return len(batch), written, False

    def _put_back(self, batch: list[dict[str, Any]]) -> None:
        with self.pending_lock:
            self.pending.extendleft(reversed(batch))
            self._trim()

    def _report_dropped(self) -> None:
        with self.pending_lock:
            dropped, self.dropped = self.dropped, 0
        if dropped:
            logger.warning(
                "prediction log: dropped the %d oldest rows, more than "
                "PREDICTION_LOG_MAX_PENDING (%d) were waiting for the database",
                dropped,
                settings.PREDICTION_LOG_MAX_PENDING,
            )


def _insert(batch: list[dict[str, Any]]) -> None:
    # atomic: a refused row must not abort a transaction the caller of flush() has open.
    # Conflicts are skipped: a batch whose commit was not acknowledged may be written again.
    with transaction.atomic():
        if connection.vendor == "postgresql":
            _copy(batch)
        else:
            PredictionLog.objects.bulk_create(
                [PredictionLog(**values) for values in batch], ignore_conflicts=True
            )


# The writer shares the GIL with the threads serving requests, and the requests it holds up are
# the slowest ones (p99): COPY holds it about a third as long as building model instances for
# bulk_create does (~8 ms instead of ~26 for 300 rows).
_COLUMNS = [field.column for field in PredictionLog._meta.concrete_fields]
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy(batch: list[dict[str, Any]]) -> None:
    table = connection.ops.quote_name(PredictionLog._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(column) for column in _COLUMNS)
    lines = "".join(
        "\t".join(_copy_text(values[column]) for column in _COLUMNS) + "\n" for values in batch
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS prediction_log_incoming "
            f"(LIKE {table}) ON COMMIT DELETE ROWS"
        )
        # Through Django's cursor, so a refused value raises django.db's DataError.
        cursor.copy_expert(f"COPY prediction_log_incoming ({columns}) FROM STDIN", StringIO(lines))
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM prediction_log_incoming "  # noqa: S608 (our own names, quoted)
            "ON CONFLICT DO NOTHING"
        )


def _copy_text(value: object) -> str:
    """`value` in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value).translate(_COPY_ESCAPES)


_current: _Writer | None = None
_current_lock = threading.Lock()


def _writer(*, start: bool) -> _Writer:
    writer = _current
    # A forked child (a gunicorn worker) must not share its parent's queue or rely on a thread
    # that did not survive the fork: it starts afresh.
    if writer is None or writer.pid != os.getpid():
        writer = _new_writer()
    if start and writer.thread is None:
        writer.start()
    return writer


def _new_writer() -> _Writer:
    global _current
    with _current_lock:
        if _current is None or _current.pid != os.getpid():
            _current = _Writer()
        return _current


def _forget_after_fork() -> None:
    # Locks held by another thread at the fork would stay locked forever in the child.
    global _current, _current_lock
    _current = None
    _current_lock = threading.Lock()


def _flush_at_exit() -> None:
    writer = _current
    if writer is None or writer.pid != os.getpid():
        return
    writer.stopping = True
    flush()
    connection.close()
    if writer.pending:
        logger.error("prediction log: %d rows lost at exit", len(writer.pending))


os.register_at_fork(after_in_child=_forget_after_fork)
# Rather than atexit: a multiprocessing child (a granian worker) ends with os._exit, which skips
# atexit, after running these; an ordinary process runs them at exit too.
_flush_at_end = multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=10)
