"""Where numba caches lrmerge's compiled kernels: one user-wide folder keyed by the source's content.

numba's own `cache=True` writes next to the source (`__pycache__`) or, with NUMBA_CACHE_DIR, under a
folder named by a hash of the source's absolute path, so every fresh clone (a new path, an empty
`__pycache__`) compiles every kernel again: minutes of CPU for the test suite. Here the folder is
named by a hash of the source file's bytes instead, so every clone, venv or checkout of the same
kernels.py shares one compiled copy, and an edited kernels.py gets a folder of its own.

numba's checks stay as they are: an index entry is used only when numba's version, the source
stamp (here the hash of the file's content), the function's own bytecode and the machine (CPU
name and features) all match; anything else compiles afresh. As with numba's own
locators, a jitted function that calls code of another file is not invalidated by edits there
(kernels.py calls only itself, numpy and numba).

The folder: $NUMBA_CACHE_DIR/lrmerge if set, else $XDG_CACHE_HOME/lrmerge/numba (~/.cache/...).
Where it cannot be written, numba's usual locators apply.

Processes started side by side (two merge jobs, two test workers) would each compile a kernel the
folder lacks: a process that misses takes a lock file for that kernel and signature, looks again
once it has it (the other process may have just saved it), and compiles only if still missing;
the lock goes when the compiled kernel is saved. A lock kept by a process whose compile failed is
waited for at most LOCK_WAIT_S, then the waiting process compiles for itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path

from numba.core import caching, config, dispatcher

PACKAGE = Path(__file__).resolve().parent
LOCK_WAIT_S = 600
_held: dict[str, object] = {}  # lock path -> open file holding its lock, in this process


def cache_root() -> Path:
    if config.CACHE_DIR:
        return Path(config.CACHE_DIR) / "lrmerge"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lrmerge" / "numba"


class ContentCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """numba cache locator for the functions of lrmerge's own files (see the module doc)."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        with open(py_file, "rb") as fh:
            self._digest = hashlib.sha256(fh.read()).hexdigest()
        self._cache_path = str(cache_root() / f"{Path(py_file).stem}-{self._digest[:20]}")

    def get_source_stamp(self):
        return self._digest  # the content, whatever numba's version stamps

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        try:
            inside = Path(py_file).resolve().is_relative_to(PACKAGE)
        except OSError:
            return None
        if not inside or not os.path.isfile(py_file):
            return None
        return super().from_function(py_func, py_file)  # None where the folder is not writable


def _lock(path: str) -> None:
    fh = open(path, "a+b")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _held[path] = fh
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                fh.close()
                return
            time.sleep(0.05)


def _unlock(path: str) -> None:
    fh = _held.pop(path, None)
    if fh is not None:
        fh.close()  # releases the lock


class LockingFunctionCache(caching.FunctionCache):
    """numba's FunctionCache; for ContentCacheLocator's functions, one compile at a time across
    processes per function and signature (see the module doc)."""

    def _lock_path(self, sig) -> str | None:
        if not isinstance(self._impl.locator, ContentCacheLocator):
            return None
        key = hashlib.sha256(repr((self._impl.filename_base, str(sig))).encode()).hexdigest()
        return os.path.join(self._cache_path, f"compile-{key[:24]}.lock")

    def load_overload(self, sig, target_context):
        cres = super().load_overload(sig, target_context)
        path = self._lock_path(sig) if cres is None else None
        if path is None or _held:  # holding one already (a nested compile): never wait on two
            return cres
        try:
            _lock(path)
        except OSError:
            return None
        cres = super().load_overload(sig, target_context)  # saved while we waited?
        if cres is not None:
            _unlock(path)
        return cres  # None: this process compiles, and save_overload unlocks

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        finally:
            path = self._lock_path(sig)
            if path is not None:
                _unlock(path)


def install() -> None:
    """Put the locator first for functions compiled from now on, and the locking cache in
    numba's dispatcher (idempotent)."""
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # public from numba 0.61
    classes = impl._locator_classes
    if ContentCacheLocator not in classes:
        classes.insert(0, ContentCacheLocator)
    if dispatcher.FunctionCache is caching.FunctionCache:
        dispatcher.FunctionCache = LockingFunctionCache
