"""Least authority for paths: job sources and targets must lie under allowed roots."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput, PathNotAllowed


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
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # readlink of what lstat had just seen as a link: swapped meanwhile
            raise PathNotAllowed(
                f"{what} path {text} refused: {exc.filename} changed between a link and a directory while it was "
                "resolved"
            ) from None
        raise InvalidInput(f"{what} path {text} cannot be resolved: {exc}") from None
    except RuntimeError as exc:  # a symlink loop (RuntimeError before Python 3.13)
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


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
# What opening a symlink with O_NOFOLLOW answers: ELOOP for the last component, ENOTDIR
# with O_DIRECTORY (and for a file where a directory was expected).
_SWAPPED_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR})


@dataclass(frozen=True)
class AllowedPath:
    """A path under an allowed root that is opened only relative to the root's directory.

    Resolving a path and then opening it by name cannot be made safe: a directory of the
    path can be swapped for a symlink in between. Instead every component below the root
    is opened with ``O_NOFOLLOW`` relative to a descriptor of the one above it, so a
    component that is (or becomes) a symlink is refused, never followed; what is then done
    to the file (open, create, rename, link, unlink) is done relative to its directory's
    descriptor, which stays beneath the root whatever is renamed meanwhile.

    Parameters:
      root(Path): the allowed root (resolved) the path lies under.
      parts(tuple[str, ...]): the components below the root; the last is the file's name.
      what(str): what the path is for ("import source", "export target"), for messages.
      given(str): the path as the caller gave it, for messages.
    """

    root: Path
    parts: tuple[str, ...]
    what: str
    given: str

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]

    def __str__(self) -> str:
        return str(self.path)

    def open_parent(self, *, create: bool = False) -> int:
        """A descriptor of the directory that holds the file; ``create`` makes missing
        directories on the way. ``FileNotFoundError`` when one is missing (and not made),
        ``PathNotAllowed`` when one is not a directory (a symlink, or swapped for one)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotAllowed(
                f"{self.what} path {self.given} refused: its allowed root {self.root} does not exist or is not "
                "a directory (PAGLETS_ARTIFACTS_ALLOWED_ROOTS)"
            ) from None
        try:
            for depth, part in enumerate(self.parts[:-1], start=1):
                if create:
                    with contextlib.suppress(FileExistsError):  # mkdir never follows a link either
                        os.mkdir(part, 0o777, dir_fd=fd)
                below = self._open_dir(part, fd, depth)
                os.close(fd)
                fd = below
            return fd
        except BaseException:
            os.close(fd)
            raise

    def open_file(self) -> int:
        """A read-only descriptor of the file itself, never through a link
        (``FileNotFoundError`` when it is missing)."""
        dir_fd = self.open_parent()
        try:
            return os.open(self.name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self.refused() from None
            raise
        finally:
            os.close(dir_fd)

    def unlink(self) -> None:
        """Remove the file (a link in its place is removed, never followed); gone is fine."""
        dir_fd = self.open_parent()
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def _open_dir(self, part: str, fd: int, depth: int) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in _SWAPPED_ERRNOS:
                raise
        try:
            mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
        except OSError:
            mode = stat.S_IFLNK  # gone since the open: it is being swapped
        if stat.S_ISLNK(mode) or stat.S_ISDIR(mode):  # a link, or a directory again: swapped under us
            raise self.refused(depth)
        where = self.root.joinpath(*self.parts[:depth])
        raise InvalidInput(f"{self.what} path {self.given}: {where} is a file, not a directory")

    def refused(self, depth: int | None = None) -> PathNotAllowed:
        """The error for a component (``depth`` components below the root; the file itself
        when ``None``) that is a symlink or was swapped for one after the path was checked."""
        where = self.path if depth is None else self.root.joinpath(*self.parts[:depth])
        kind = "a regular file" if depth is None else "a directory"
        return PathNotAllowed(
            f"{self.what} path {self.given} refused: {where} is not {kind} (a symlink, or swapped for one "
            f"after the path was checked); links below the allowed root {self.root} are never followed"
        )


def resolve_beneath(
    path: str | os.PathLike[str], roots: Iterable[Path], *, what: str, forbidden: Iterable[Path] = ()
) -> AllowedPath:
    """:func:`resolve_allowed`, as an :class:`AllowedPath` to be opened beneath its root.

    Links are resolved here (one that stays under a root is allowed), and the resolved
    components are what is opened later, none of them followed if it has become a link."""
    roots = list(roots)
    resolved = resolve_allowed(path, roots, what=what, forbidden=forbidden)
    text = os.fspath(path)
    for root in (Path(root).resolve(strict=False) for root in roots):
        if resolved == root:
            raise InvalidInput(f"{what} path {text} is the allowed root {root} itself, not a file under it")
        if resolved.is_relative_to(root):
            return AllowedPath(root=root, parts=resolved.relative_to(root).parts, what=what, given=text)
    raise PathNotAllowed(f"{what} path {text} is outside the allowed roots")  # resolve_allowed refused it first
