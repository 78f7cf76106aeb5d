"""Loaded pyfunc models, kept per serving process.

An LRU bounded by count (MODEL_SERVING_CACHE_MAX_MODELS) and by an estimate of memory
(MODEL_SERVING_CACHE_MAX_MEMORY_MB). Concurrent first requests for one version load it once
(a lock per version); a failed load is remembered for MODEL_SERVING_LOAD_RETRY_SECONDS, not for
ever. Versions are keyed by (MLflow name, version), so a new version or a moved alias is simply
another entry, and the old one ages out.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from inference import metrics
from registry import mlflow as registry_mlflow

if TYPE_CHECKING:
    from inference.fast_path import Plan

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (MLflow registered model name, version)


class ModelLoadFailed(Exception):
    """The version could not be loaded; str() says why, in words a caller can act on."""


@dataclass
class Loaded:
    model: object  # mlflow.pyfunc.PyFuncModel
    fast_path: Plan | None  # how it skips pandas, when it can
    saved_with: str  # the libraries it was saved with that differ from ours, if any
    path: str  # its files, kept while it is cached
    size_bytes: int
    loaded_at: float


_entries: OrderedDict[Key, Loaded] = OrderedDict()
_failures: dict[Key, tuple[float, str]] = {}
_loading: dict[Key, threading.Lock] = {}
_lock = threading.Lock()


def get(key: Key) -> Loaded:
    """The loaded model, loading it (once, however many ask at the same time) if need be."""
    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            _entries.move_to_end(key)
            metrics.CACHE_HITS.inc()
            return entry
        load_lock = _loading.setdefault(key, threading.Lock())
    with load_lock:
        with _lock:
            entry = _entries.get(key)
            if entry is not None:  # loaded by whoever held the lock before us
                _entries.move_to_end(key)
                return entry
            failure = _failures.get(key)
        if failure is not None and time.monotonic() < failure[0]:
            raise ModelLoadFailed(failure[1])
        metrics.CACHE_MISSES.inc()
        try:
            entry = _load(key)
        except ModelLoadFailed as exc:
            with _lock:
                retry_at = time.monotonic() + settings.MODEL_SERVING_LOAD_RETRY_SECONDS
                _failures[key] = (retry_at, str(exc))
            raise
        with _lock:
            _failures.pop(key, None)
            _entries[key] = entry
            _evict()
        return entry


def is_loaded(key: Key) -> bool:
    with _lock:
        return key in _entries


def load_failure(key: Key) -> str | None:
    """Why the last load failed, while that is remembered."""
    with _lock:
        failure = _failures.get(key)
    return failure[1] if failure and time.monotonic() < failure[0] else None


def clear() -> None:
    with _lock:
        while _entries:
            _discard(*_entries.popitem(last=False))
        _failures.clear()


def _evict() -> None:
    """Oldest first, until within both bounds; the newest entry always stays."""
    budget = settings.MODEL_SERVING_CACHE_MAX_MEMORY_MB * 1024**2
    while len(_entries) > 1 and (
        len(_entries) > settings.MODEL_SERVING_CACHE_MAX_MODELS
        or sum(entry.size_bytes for entry in _entries.values()) > budget
    ):
        key, entry = _entries.popitem(last=False)
        _discard(key, entry)
        metrics.EVICTIONS.inc()
        logger.info("unloaded %s version %s", *key)


def _discard(key: Key, entry: Loaded) -> None:
    shutil.rmtree(entry.path, ignore_errors=True)


def _load(key: Key) -> Loaded:
    from mlflow.pyfunc import load_model  # heavy: imported by the processes that serve

    from inference.fast_path import plan_for  # numpy: likewise

    name, version = key
    started = time.monotonic()
    rss_before = _rss_bytes()
    path = tempfile.mkdtemp(prefix="hokusai-model-")
    try:
        local = registry_mlflow.download_model(name, version, path)
        model = load_model(local)
    except Exception as exc:  # whatever the flavour's loader raises, the caller needs words
        why = _why(exc, Path(path))  # before the files, which say what it was saved with, go
        shutil.rmtree(path, ignore_errors=True)
        metrics.LOAD_FAILURES.inc()
        raise ModelLoadFailed(why) from exc
    seconds = time.monotonic() - started
    metrics.LOADS.inc()
    metrics.LOAD_SECONDS.observe(seconds)
    size = max(_disk_bytes(Path(path)), _rss_bytes() - rss_before)
    logger.info("loaded %s version %s in %.2fs (~%d MiB)", name, version, seconds, size >> 20)
    return Loaded(
        model=model,
        fast_path=plan_for(model),
        saved_with=", ".join(_version_mismatches(Path(path))),
        path=path,
        size_bytes=size,
        loaded_at=time.time(),
    )


def _why(exc: Exception, path: Path) -> str:
    """The loader's complaint, with the library versions the model was saved with when they
    differ from ours (the usual cause: a model pickled by another scikit-learn)."""
    return f"{type(exc).__name__}: {exc}"[:500] + saved_with_note(
        ", ".join(_version_mismatches(path))
    )


def saved_with_note(saved_with: str) -> str:
    return f" (saved with {saved_with})" if saved_with else ""


def _version_mismatches(path: Path) -> list[str]:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    found = []
    for requirements in path.rglob("requirements.txt"):
        for line in requirements.read_text(errors="replace").splitlines():
            package, _, wanted = line.strip().partition("==")
            if not wanted:
                continue
            try:
                have = installed(package)
            except PackageNotFoundError:
                have = "not installed"
            if have != wanted:
                found.append(f"{package} {wanted}, here {have}")
    return found


def _disk_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the files' size alone estimates the model
        return 0
