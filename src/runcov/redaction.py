"""Redaction by construction: which files may be reported, under which path, and string scrubbing.

Every string runcov emits passes through here: file paths become relative ``/`` paths under the
longest matching source root (files outside the roots, excluded files and anything that is not a
real file are dropped), and user regexes rewrite any match to ``[REDACTED]``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from typing import Iterable, Optional

from runcov._fork import in_forked_child

__all__ = ["MAX_PATH_BYTES", "REDACTED", "Redactor"]

REDACTED = "[REDACTED]"
#: Longest relative path runcov reports (the wire format's limit); longer paths are dropped.
MAX_PATH_BYTES = 1024
_CACHE_LIMIT = 65536


def _norm(path: str) -> str:
    return os.path.realpath(os.path.abspath(path)).rstrip(os.sep) or os.sep


class Redactor:
    """Maps absolute paths to reportable relative paths and scrubs strings.

    ``roots`` are source roots (directories or single files); ``exclude`` are globs matched
    against the relative path (``*`` crosses ``/``; a glob without ``/`` also matches
    a file name at any depth) or, when absolute, against the absolute path;
    ``redact`` are regular expressions applied to every emitted string.
    """

    def __init__(
        self,
        roots: Iterable[str],
        exclude: Iterable[str] = (),
        redact: Iterable[str] = (),
    ) -> None:
        normalized = {_norm(r) for r in roots}
        # Longest root first so that nested roots win.
        self._roots = sorted(normalized, key=len, reverse=True)
        self._exclude = [g for g in exclude if g]
        self._patterns = [re.compile(p) for p in redact if p]
        self._cache: dict[str, Optional[str]] = {}
        self._lock = threading.Lock()
        in_forked_child(self._reset_lock)

    def _reset_lock(self) -> None:
        # A thread that held the lock at fork time does not exist in the child.
        self._lock = threading.Lock()

    @property
    def roots(self) -> list[str]:
        """The normalized source roots, longest first."""
        return list(self._roots)

    def scrub(self, text: str) -> str:
        """``text`` with every match of the user's regexes replaced by ``[REDACTED]``."""
        for pattern in self._patterns:
            text = pattern.sub(REDACTED, text)
        return text

    def relpath(self, abs_path: str) -> Optional[str]:
        """The scrubbed ``/`` path of ``abs_path`` relative to its root, or None to drop it."""
        try:
            return self._cache[abs_path]
        except KeyError:
            pass
        try:
            result = self._compute(abs_path)
        except Exception:
            result = None
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[abs_path] = result
        return result

    def _compute(self, abs_path: str) -> Optional[str]:
        if not abs_path or abs_path.startswith("<") or not os.path.isabs(abs_path):
            return None
        real = _norm(abs_path)
        if not os.path.isfile(real):
            return None
        for root in self._roots:
            if real == root:
                rel = os.path.basename(real)
            elif real.startswith(root + os.sep) or (root == os.sep and real.startswith(os.sep)):
                rel = os.path.relpath(real, root)
            else:
                continue
            rel = rel.replace(os.sep, "/")
            if not rel or rel.startswith("/") or ".." in rel.split("/"):
                return None
            if self._excluded(rel, real, abs_path):
                return None
            rel = self.scrub(rel)
            if len(rel.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
                return None
            return rel
        return None

    def _excluded(self, rel: str, real: str, given: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        candidates: tuple[str, ...]
        for glob in self._exclude:
            if os.path.isabs(glob):
                candidates = (real, given)
            elif "/" in glob:
                candidates = (rel,)
            else:
                candidates = (rel, name)
            if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
                return True
        return False
