"""Atomic writes keep a file's permissions and never leave a temporary file behind."""

import os
import stat

import pytest

from runtime.atomic import atomic_write_text


def test_a_new_file_gets_the_usual_permissions_and_a_replaced_one_keeps_its_own(tmp_path):
    fresh = tmp_path / "new.txt"
    atomic_write_text(fresh, "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    shared = tmp_path / "shared.txt"
    shared.write_text("old")
    shared.chmod(0o640)
    atomic_write_text(shared, "new")
    assert shared.read_text() == "new" and stat.S_IMODE(shared.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    target.write_text("precious")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the new text went into the temporary file
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "replacement")
    assert target.read_text() == "precious" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
