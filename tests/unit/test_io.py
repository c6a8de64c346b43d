"""modelyard._io.atomic_folder: a folder appears whole under its name or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard._io import atomic_folder


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_the_folder_appears_when_the_block_ends(tmp_path):
    target = tmp_path / "out" / "run1"
    with atomic_folder(target) as staging:
        assert staging.parent == target.parent and staging != target
        (staging / "a.txt").write_text("a")
        assert not target.exists()  # nothing under the final name while it is being written
    assert (target / "a.txt").read_text() == "a"
    assert _hidden(target.parent) == []


def test_an_existing_folder_is_replaced_not_mixed(tmp_path):
    target = tmp_path / "run1"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").is_file()  # the previous copy stays until the new one is in place
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _hidden(tmp_path) == []


def test_an_error_inside_the_block_leaves_the_previous_folder_and_no_staging_folder(tmp_path):
    target = tmp_path / "run1"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="parity"):
        with atomic_folder(target) as staging:
            (staging / "half.onnx").write_bytes(b"\0" * 10)
            raise RuntimeError("parity failed")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert _hidden(tmp_path) == []


def test_an_error_without_a_previous_folder_leaves_nothing(tmp_path):
    target = tmp_path / "run1"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(target) as staging:
            (staging / "x").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_writer_left_is_cleaned_up_or_put_back(tmp_path):
    target = tmp_path / "run1"
    # killed mid-write: a half-built staging folder; killed between the two renames: only `.previous`
    (tmp_path / ".run1.tmp").mkdir()
    (tmp_path / ".run1.tmp" / "half").write_text("half")
    (tmp_path / ".run1.previous").mkdir()
    (tmp_path / ".run1.previous" / "old.txt").write_text("old")
    with atomic_folder(target) as staging:
        assert list(staging.iterdir()) == []  # the half-built folder is not reused
        assert (target / "old.txt").read_text() == "old"  # the earlier folder is back under its name
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _hidden(tmp_path) == []


def test_without_replace_an_existing_folder_is_never_touched(tmp_path):
    target = tmp_path / "snapshots" / "abc123"
    with atomic_folder(target, replace=False) as staging:
        (staging / "manifest.json").write_text("{}")
    with pytest.raises(FileExistsError):
        with atomic_folder(target, replace=False) as staging:
            (staging / "manifest.json").write_text('{"second": true}')
    assert (target / "manifest.json").read_text() == "{}"
    assert _hidden(target.parent) == []


def test_without_replace_concurrent_writers_get_their_own_staging_folders(tmp_path):
    target = tmp_path / "abc123"
    with pytest.raises(FileExistsError):  # the second to finish finds the first one's folder in place
        with atomic_folder(target, replace=False) as first, atomic_folder(target, replace=False) as second:
            assert first != second
            (first / "f").write_text("1")
            (second / "f").write_text("2")
            assert (first / "f").read_text() == "1"
    assert (target / "f").read_text() == "2"
    assert _hidden(tmp_path) == []
