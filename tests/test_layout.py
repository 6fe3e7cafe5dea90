"""The store layout: the only code that spells the store's directories and file names."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from paglets_artifacts import ArtifactStore, InvalidInput
from paglets_artifacts.store.layout import StoreLayout

ID = "feedface" * 4
REPO = Path(__file__).resolve().parent.parent
#: Names only layout.py may spell (as string constants or f-string parts); "metadata" and "tmp"
#: are left out: as words they have other uses.
LAYOUT_NAMES = {"blobs", ".bin", ".json", ".json.part"}


def test_the_layout_names_every_file_of_an_artifact(tmp_path):
    layout = StoreLayout.at(tmp_path / "store")
    assert layout.blob(ID) == tmp_path / "store" / "blobs" / f"{ID}.bin"
    assert layout.metadata(ID) == tmp_path / "store" / "metadata" / f"{ID}.json"
    assert layout.part(ID) == tmp_path / "store" / "tmp" / f"{ID}.part"
    assert layout.staged_metadata(ID) == tmp_path / "store" / "tmp" / f"{ID}.json.part"
    assert layout.staged_id(layout.staged_metadata(ID)) == ID and layout.staged_id(layout.part(ID)) is None
    with pytest.raises(InvalidInput):
        layout.blob("../x")


def test_the_layout_lists_ids_only(tmp_path):
    store = ArtifactStore(tmp_path / "store", host_url="http://h", fsync=False)
    ref = store.create_from_stream(io.BytesIO(b"abc"), artifact_id=ID).ref
    (store.layout.blobs_dir / "not-an-id.bin").write_bytes(b"?")
    assert set(store.layout.blobs()) == {ID} and set(store.layout.metadata_files()) == {ID}
    assert store.layout.present(ID) and store.layout.read_ref(ID) == ref
    assert store.layout.blob_bytes() == 4  # every blob counts against the quota, ours or not


def _spelled_names(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and node.value in LAYOUT_NAMES:
            found.add(node.value)
    return found


@pytest.mark.parametrize(
    "module",
    sorted(
        str(path.relative_to(REPO))
        for folder in ("src/paglets_artifacts", "workers")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "layout.py"
    ),
)
def test_no_other_module_spells_the_store_paths(module):
    assert _spelled_names(REPO / module) == set()


@pytest.mark.parametrize("module", ["layout.py", "index.py", "redis_index.py"])
def test_the_layout_and_the_indexes_never_import_the_store(module):
    # The store stands on them: an index is given a layout and a ref reader, never the store.
    tree = ast.parse((REPO / "src" / "paglets_artifacts" / "store" / module).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"artifacts", "paglets_artifacts.store.artifacts"}
    assert "artifacts" not in {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    }
