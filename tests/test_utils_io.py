"""Atomic artifact writes: what they refuse and the permissions they leave."""

from __future__ import annotations

import os
import stat

import pytest

from lapa.utils.io import atomic_directory, atomic_path, atomic_write_json


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


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "info.json", {"a": 1})
        with atomic_path(tmp_path / "laq.ckpt") as tmp:  # the temporary file may be replaced by its writer
            tmp.write_bytes(b"x")
        with atomic_directory(tmp_path / "policy") as tmp:
            atomic_write_json(tmp / "config.json", {})
        plain = tmp_path / "plain"
        plain.write_text("")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == want
    for f in (tmp_path / "info.json", tmp_path / "laq.ckpt", tmp_path / "policy" / "config.json"):
        assert stat.S_IMODE(f.stat().st_mode) == want, f
    assert stat.S_IMODE((tmp_path / "policy").stat().st_mode) == 0o777 & ~umask


def test_atomic_path_refuses_a_directory_before_the_block_runs(tmp_path):
    ran = []
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a directory"):
        with atomic_path(tmp_path) as tmp:
            ran.append(tmp)
    assert ran == [] and list(tmp_path.iterdir()) == []
