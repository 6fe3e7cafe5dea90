"""Least authority: a path is used only if it resolves under a configured root."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from paglets_artifacts import InvalidInput, PathNotAllowed
from paglets_artifacts.store.paths import resolve_allowed, resolve_beneath


@pytest.fixture
def root(tmp_path: Path) -> Path:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    return allowed.resolve()


def test_a_path_under_a_root_is_returned_resolved(root):
    (root / "sub").mkdir()
    assert resolve_allowed(root / "sub" / ".." / "file.bin", [root], what="source") == root / "file.bin"
    assert resolve_allowed(str(root / "new" / "file.bin"), [root], what="target") == root / "new" / "file.bin"


def test_the_root_itself_is_allowed(root):
    assert resolve_allowed(root, [root], what="target") == root


def test_any_of_several_roots(tmp_path, root):
    second = tmp_path / "second"
    second.mkdir()
    assert resolve_allowed(second / "x", [root, second], what="source") == second.resolve() / "x"


def test_a_path_outside_every_root_is_refused(tmp_path, root):
    with pytest.raises(PathNotAllowed, match="outside the allowed roots"):
        resolve_allowed(tmp_path / "elsewhere.bin", [root], what="source")


def test_dot_dot_escaping_a_root_is_refused(root):
    with pytest.raises(PathNotAllowed):
        resolve_allowed(f"{root}/../allowed-not/x", [root], what="source")
    with pytest.raises(PathNotAllowed):
        resolve_allowed(f"{root}/../../etc/passwd", [root], what="source")


def test_a_sibling_with_a_common_prefix_is_not_inside(tmp_path, root):
    sibling = tmp_path / "allowed-evil"
    sibling.mkdir()
    with pytest.raises(PathNotAllowed):
        resolve_allowed(sibling / "x", [root], what="source")


def test_a_symlink_escaping_a_root_is_refused(tmp_path, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    (root / "link-to-file").symlink_to(outside / "secret")
    (root / "link-to-dir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathNotAllowed, match="resolved"):
        resolve_allowed(root / "link-to-file", [root], what="source")
    with pytest.raises(PathNotAllowed):
        resolve_allowed(root / "link-to-dir" / "secret", [root], what="source")
    with pytest.raises(PathNotAllowed):
        resolve_allowed(root / "link-to-dir" / "new-file", [root], what="target")


def test_a_symlink_staying_inside_a_root_resolves_to_its_target(root):
    (root / "real.bin").write_bytes(b"x")
    (root / "alias.bin").symlink_to(root / "real.bin")
    assert resolve_allowed(root / "alias.bin", [root], what="source") == root / "real.bin"


def test_a_symlinked_root_is_compared_by_its_real_location(tmp_path, root):
    link_root = tmp_path / "root-link"
    link_root.symlink_to(root, target_is_directory=True)
    assert resolve_allowed(root / "x", [link_root], what="source") == root / "x"
    assert resolve_allowed(link_root / "x", [root], what="source") == root / "x"


def test_a_symlink_loop_is_invalid_input(root):
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(InvalidInput, match="source path"):
        resolve_allowed(root / "loop" / "x", [root], what="source")


@pytest.mark.parametrize("relative", ["file.bin", "./file.bin", "../file.bin", "sub/file.bin"])
def test_relative_paths_are_refused(root, relative, monkeypatch):
    monkeypatch.chdir(root)  # even when the working directory is inside a root
    with pytest.raises(InvalidInput, match="must be absolute"):
        resolve_allowed(relative, [root], what="source")


def test_no_roots_refuses_every_path(root):
    with pytest.raises(PathNotAllowed, match="no allowed roots"):
        resolve_allowed(root / "x", [], what="target")
    with pytest.raises(PathNotAllowed, match="PAGLETS_ARTIFACTS_ALLOWED_ROOTS"):
        resolve_allowed(root / "x", (), what="target")


@pytest.mark.parametrize("bad", ["", "/tmp/a\x00b", b"/tmp/bytes", None, 5])
def test_malformed_paths_are_invalid_input_naming_what_they_are(root, bad):
    with pytest.raises(InvalidInput, match="export target"):
        resolve_allowed(bad, [root], what="export target")  # type: ignore[arg-type]


def test_path_like_objects_are_accepted(root):
    class Custom(os.PathLike):
        def __fspath__(self):
            return str(root / "p")

    assert resolve_allowed(Custom(), [root], what="source") == root / "p"


def test_a_path_inside_a_forbidden_directory_is_refused_even_under_an_allowed_root(tmp_path):
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)
    with pytest.raises(PathNotAllowed, match="store"):
        resolve_allowed(store / "blobs" / "x.bin", [tmp_path], what="export target", forbidden=[store])
    with pytest.raises(PathNotAllowed):
        resolve_allowed(store, [tmp_path], what="export target", forbidden=[store])
    assert (
        resolve_allowed(tmp_path / "store-x", [tmp_path], what="export target", forbidden=[store])
        == (tmp_path / "store-x").resolve()
    )


# ---------------------------------------------------------------------- opened beneath the root


def _swap_for_link(directory: Path, target: Path) -> None:
    """What an attacker who can write under the root does after a path was checked."""
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target, target_is_directory=True)


def test_an_allowed_path_keeps_the_root_and_the_components_below_it(root):
    (root / "a").mkdir()
    allowed = resolve_beneath(root / "a" / ".." / "a" / "f.bin", [root], what="import source")
    assert (allowed.root, allowed.parts, allowed.name) == (root, ("a", "f.bin"), "f.bin")
    assert allowed.path == root / "a" / "f.bin" and str(allowed) == str(root / "a" / "f.bin")


def test_the_root_itself_is_no_file_to_open_beneath_it(root):
    with pytest.raises(InvalidInput, match="is the allowed root"):
        resolve_beneath(root, [root], what="export target")


def test_a_path_outside_the_roots_is_refused_before_any_descriptor(tmp_path, root):
    with pytest.raises(PathNotAllowed, match="outside the allowed roots"):
        resolve_beneath(tmp_path / "x.bin", [root], what="import source")


def test_a_directory_swapped_for_a_symlink_after_the_check_is_refused_naming_it(tmp_path, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.bin").write_bytes(b"secret")
    (root / "d").mkdir()
    (root / "d" / "f.bin").write_bytes(b"mine")
    allowed = resolve_beneath(root / "d" / "f.bin", [root], what="import source")
    _swap_for_link(root / "d", outside)
    with pytest.raises(PathNotAllowed, match=r"import source path .*/d/f\.bin refused: .*/d is not a directory"):
        allowed.open_parent()
    with pytest.raises(PathNotAllowed):
        allowed.open_file()
    with pytest.raises(PathNotAllowed):
        allowed.unlink()
    assert (outside / "f.bin").read_bytes() == b"secret"


def test_a_file_swapped_for_a_symlink_after_the_check_is_refused(tmp_path, root):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"secret")
    (root / "f.bin").write_bytes(b"mine")
    allowed = resolve_beneath(root / "f.bin", [root], what="import source")
    (root / "f.bin").unlink()
    (root / "f.bin").symlink_to(outside)
    with pytest.raises(PathNotAllowed, match="is not a regular file"):
        allowed.open_file()
    allowed.unlink()  # removes the link, never what it points to
    assert outside.read_bytes() == b"secret" and not (root / "f.bin").is_symlink()


def test_missing_directories_are_made_beneath_the_root_only_when_asked(root):
    allowed = resolve_beneath(root / "new" / "deeper" / "f.bin", [root], what="export target")
    with pytest.raises(FileNotFoundError):
        allowed.open_parent()
    fd = allowed.open_parent(create=True)
    os.close(fd)
    assert (root / "new" / "deeper").is_dir()


def test_a_path_that_changes_while_it_is_resolved_is_refused_naming_it(root, monkeypatch):
    def swapped(self, strict=False):
        raise OSError(errno.EINVAL, "Invalid argument", str(root / "d"))

    monkeypatch.setattr(Path, "resolve", swapped)
    with pytest.raises(
        PathNotAllowed, match=r"export target path .*/d/x refused: .*/d changed between a link and a directory"
    ):
        resolve_allowed(str(root / "d" / "x"), [root], what="export target")


def test_an_allowed_root_that_does_not_exist_is_named_in_the_refusal(tmp_path):
    missing = (tmp_path / "not-there").resolve()
    allowed = resolve_beneath(missing / "sub" / "f.bin", [missing], what="export target")
    with pytest.raises(PathNotAllowed, match=r"its allowed root .*/not-there does not exist"):
        allowed.open_parent(create=True)
    assert not missing.exists()  # an allowed root is configuration: never made on the way


def test_a_file_where_a_directory_of_the_path_should_be_is_invalid_input_naming_it(root):
    (root / "plain").write_bytes(b"a file")
    allowed = resolve_beneath(root / "plain" / "f.bin", [root], what="export target")
    with pytest.raises(InvalidInput, match=r"export target path .*/plain/f\.bin: .*/plain is a file, not a directory"):
        allowed.open_parent(create=True)
