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
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from numba.core import caching, config

PACKAGE = Path(__file__).resolve().parent


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


def install() -> None:
    """Put the locator first for functions compiled from now on (idempotent)."""
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # public from numba 0.61
    classes = impl._locator_classes
    if ContentCacheLocator not in classes:
        classes.insert(0, ContentCacheLocator)
