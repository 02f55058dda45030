"""Atomic artifact writes: what they refuse and the permissions they leave."""

from __future__ import annotations

import pytest

from lapa.utils.io import atomic_directory


def test_atomic_directory_refuses_an_existing_file(tmp_path):
    existing = tmp_path / "existing.txt"
    existing.write_text("keep")
    with pytest.raises(FileExistsError, match=f"{existing}: exists and is not a directory"):
        with atomic_directory(existing) as tmp:
            (tmp / "x").write_text("y")
    assert existing.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]  # no .old-/.tmp- leftovers
    out = tmp_path / "out"
    for text in ("a", "b"):  # a directory is still replaced
        with atomic_directory(out) as tmp:
            (tmp / "x").write_text(text)
    assert (out / "x").read_text() == "b" and sorted(p.name for p in tmp_path.iterdir()) == [
        "existing.txt",
        "out",
    ]
