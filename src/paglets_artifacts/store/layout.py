"""The store's layout on disk: the one place that knows its directories and file names.

``blobs/<id>.bin`` holds an artifact's bytes, ``metadata/<id>.json`` its ref (the paglets
reference format); ``tmp/<id>.part`` is a blob being written and ``tmp/<id>.json.part``
metadata staged for a commit. The store, its indexes and its tools ask this object for
paths and listings instead of spelling them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import ArtifactNotFound, InvalidInput, TransferError
from ..refs import ArtifactRef, validate_artifact_id

BLOB_SUFFIX = ".bin"
METADATA_SUFFIX = ".json"
PART_SUFFIX = ".part"
STAGED_METADATA_SUFFIX = METADATA_SUFFIX + PART_SUFFIX


def metadata_json(ref: ArtifactRef) -> str:
    """The metadata file's text: the wire form, indent 2, sorted keys, trailing newline.

    Exactly what ``json.dumps(wire, indent=2, sort_keys=True)`` writes for the ref's flat
    object of scalars, each scalar encoded by the C encoder: with ``indent`` the whole dump
    would run in pure Python, a cost every commit pays."""
    wire = ref.to_wire()
    encode = json.dumps
    return "{\n" + ",\n".join(f"  {encode(key)}: {encode(wire[key])}" for key in sorted(wire)) + "\n}\n"


class StoreLayout:
    """Paths and listings of one store directory.

    Parameters:
      root(Path): the store directory (resolved by the caller).
    """

    def __init__(self, root: Path):
        self.root = root
        self.blobs_dir = root / "blobs"
        self.metadata_dir = root / "metadata"
        self.tmp_dir = root / "tmp"

    @classmethod
    def at(cls, root: str | Path) -> StoreLayout:
        """The layout of the store directory ``root`` (``~`` expanded, made absolute)."""
        return cls(Path(root).expanduser().resolve(strict=False))

    @property
    def directories(self) -> tuple[Path, Path, Path]:
        return (self.blobs_dir, self.metadata_dir, self.tmp_dir)

    def ensure(self) -> None:
        """Create the directories; refuse a directory that is a symlink."""
        for directory in self.directories:
            directory.mkdir(parents=True, exist_ok=True)
            if directory.is_symlink():
                raise TransferError(f"store directory {directory} is a symlink; refusing to use it")

    # ------------------------------------------------------------------ one artifact's files

    def blob(self, artifact_id: str) -> Path:
        return self.blobs_dir / f"{validate_artifact_id(artifact_id)}{BLOB_SUFFIX}"

    def metadata(self, artifact_id: str) -> Path:
        return self.metadata_dir / f"{validate_artifact_id(artifact_id)}{METADATA_SUFFIX}"

    def part(self, artifact_id: str) -> Path:
        """Where the blob of ``artifact_id`` is written before its commit."""
        return self.tmp_dir / f"{validate_artifact_id(artifact_id)}{PART_SUFFIX}"

    def staged_metadata(self, artifact_id: str) -> Path:
        """Where the metadata of ``artifact_id`` is staged between the commit's two renames."""
        return self.tmp_dir / f"{validate_artifact_id(artifact_id)}{STAGED_METADATA_SUFFIX}"

    def present(self, artifact_id: str) -> bool:
        """Whether both files of a committed artifact exist."""
        return self.metadata(artifact_id).exists() and self.blob(artifact_id).exists()

    def read_ref(self, artifact_id: str) -> ArtifactRef:
        """The ref the metadata file holds, as written (its host URL is the writer's)."""
        path = self.metadata(artifact_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ArtifactNotFound(f"No artifact {artifact_id!r}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TransferError(f"artifact {artifact_id!r} metadata is unreadable: {exc}") from None
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"artifact {artifact_id!r} metadata is not JSON: {exc}") from None
        ref = ArtifactRef.from_wire(payload)
        if ref.artifact_id != artifact_id:
            raise InvalidInput(f"artifact {artifact_id!r} metadata names another id {ref.artifact_id!r}")
        return ref

    # ------------------------------------------------------------------ listings

    def blobs(self) -> dict[str, os.DirEntry]:
        """Artifact id -> entry of every ``blobs/<id>.bin`` (names that are no id are left out)."""
        return _listing(self.blobs_dir, BLOB_SUFFIX)

    def metadata_files(self) -> dict[str, os.DirEntry]:
        """Artifact id -> entry of every ``metadata/<id>.json``."""
        return _listing(self.metadata_dir, METADATA_SUFFIX)

    def metadata_names(self) -> list[str]:
        """The stem of every ``metadata/*.json``, sorted, ids or not (a reader reports the others)."""
        return sorted(path.stem for path in self.metadata_dir.glob("*" + METADATA_SUFFIX))

    def parts(self) -> Iterator[Path]:
        """Every ``tmp/*.part``: blobs being written and staged metadata (whoever made them)."""
        return self.tmp_dir.glob("*" + PART_SUFFIX)

    @staticmethod
    def staged_id(part: Path) -> str | None:
        """The artifact id a staged-metadata file belongs to, else ``None``."""
        if part.name.endswith(STAGED_METADATA_SUFFIX):
            return part.name[: -len(STAGED_METADATA_SUFFIX)]
        return None

    def blob_bytes(self) -> int:
        """The bytes of every blob (a scan)."""
        used = 0
        for path in self.blobs_dir.glob("*" + BLOB_SUFFIX):
            try:
                used += path.stat().st_size
            except OSError:
                continue
        return used


def _listing(directory: Path, suffix: str) -> dict[str, os.DirEntry]:
    entries: dict[str, os.DirEntry] = {}
    with os.scandir(directory) as iterator:
        for entry in iterator:
            name = entry.name
            if not name.endswith(suffix):
                continue
            artifact_id = name[: -len(suffix)]
            try:
                validate_artifact_id(artifact_id)
            except InvalidInput:
                continue
            entries[artifact_id] = entry
    return entries
