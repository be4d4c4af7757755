"""The on-disk compile cache shared by all backends.

Entries are keyed by a hash of everything that determines the binary: the generated source (which
encodes the IR and the specialization), the target, the device architecture, the compiler's own
version and its options, and tattletale's version. Writes are atomic (temporary file + rename), so
concurrent processes never read a half-written entry. Set TT_CACHE_DIR to move the cache and
TT_CACHE=0 to disable it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("TT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tattletale"


def enabled() -> bool:
    return os.environ.get("TT_CACHE", "1") != "0"


def make_key(*parts: str | bytes) -> str:
    from .. import __version__

    h = hashlib.sha256(__version__.encode())
    for p in parts:
        data = p.encode() if isinstance(p, str) else p
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def load(key: str) -> bytes | None:
    if not enabled():
        return None
    try:
        return (cache_dir() / key[:2] / key).read_bytes()
    except OSError:
        return None


def store(key: str, data: bytes) -> None:
    if not enabled():
        return
    folder = cache_dir() / key[:2]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / key)
    except OSError:
        pass  # a read-only or full cache directory only costs recompilation
