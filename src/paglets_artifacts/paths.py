"""Least authority for paths: job sources and targets must lie under allowed roots."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import InvalidInput, PathNotAllowed


def resolve_allowed(
    path: str | os.PathLike[str], roots: Iterable[Path], *, what: str, forbidden: Iterable[Path] = ()
) -> Path:
    """Resolve ``path`` (symlinks included) and return it if it lies under one of ``roots``
    and in none of ``forbidden`` (the store: never a job's source or target).

    Relative paths are refused: a job may run on another machine with another working
    directory. The resolved path is what the caller must use for I/O.
    """
    try:
        text = os.fspath(path)
    except TypeError:  # None, a number, ... from a job's JSON arguments
        text = None
    if not isinstance(text, str) or not text or "\x00" in text:
        raise InvalidInput(f"invalid {what} path {path!r}")
    candidate = Path(text)
    if not candidate.is_absolute():
        raise InvalidInput(f"{what} path must be absolute: {text}")
    try:
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise InvalidInput(f"{what} path {text} cannot be resolved: {exc}") from None
    allowed = [Path(root).resolve(strict=False) for root in roots]
    if not allowed:
        raise PathNotAllowed(
            f"{what} path {text} refused: no allowed roots are configured (PAGLETS_ARTIFACTS_ALLOWED_ROOTS)"
        )
    for directory in forbidden:
        barred = Path(directory).resolve(strict=False)
        if resolved == barred or resolved.is_relative_to(barred):
            raise PathNotAllowed(f"{what} path {text} (resolved {resolved}) lies inside the store {barred}")
    for root in allowed:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    shown = os.pathsep.join(str(root) for root in allowed)
    raise PathNotAllowed(f"{what} path {text} (resolved {resolved}) is outside the allowed roots {shown}")
