"""searchr1.atomic: swaps that a kill or an error mid-way never leaves without a `final`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import searchr1.atomic as atomic
from searchr1.atomic import restore_set_aside, set_aside_name, swap_in


def _tree(root, text):
    root.mkdir()
    (root / "sub").mkdir()
    (root / "sub" / "f.txt").write_text(text)
    return root


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("can_exchange", [True, False], ids=["exchange", "two-renames"])
def test_swap_in_replaces_a_directory_and_fsyncs_it(tmp_path, monkeypatch, can_exchange):
    if not can_exchange:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                        real_fsync(fd)))
    final = _tree(tmp_path / "index", "old")
    swap_in(_tree(tmp_path / ".index.tmp", "new"), final)
    assert (final / "sub" / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    assert str(tmp_path / ".index.tmp" / "sub" / "f.txt") in synced  # the data before the rename
    assert str(tmp_path) in synced  # the rename itself


def test_swap_in_to_a_new_path_and_of_files(tmp_path):
    swap_in(_tree(tmp_path / ".a.tmp", "x"), tmp_path / "a")
    (tmp_path / ".b.tmp").write_text("new")
    (tmp_path / "b").write_text("old")
    swap_in(tmp_path / ".b.tmp", tmp_path / "b")
    assert (tmp_path / "a" / "sub" / "f.txt").read_text() == "x" and (tmp_path / "b").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_failed_second_rename_puts_the_old_copy_back(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    real_rename = os.rename

    def failing(src, dst):
        if ".tmp" in str(src):
            raise OSError("injected: the disk went away")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", failing)
    final = _tree(tmp_path / "index", "old")
    with pytest.raises(OSError, match="injected"):
        swap_in(_tree(tmp_path / ".index.tmp", "new"), final)
    assert (final / "sub" / "f.txt").read_text() == "old"
    assert not set_aside_name(final).exists()


def test_a_kill_between_the_renames_is_undone(tmp_path):
    final = tmp_path / "index"
    aside = _tree(set_aside_name(final, _dead_pid()), "old")  # what a writer killed mid-swap leaves
    assert restore_set_aside(final)
    assert (final / "sub" / "f.txt").read_text() == "old" and not aside.exists()
    assert not restore_set_aside(final)  # nothing left to do
    # a live writer's set-aside copy is its own business
    live = _tree(set_aside_name(tmp_path / "other", os.getppid()), "x")
    assert not restore_set_aside(tmp_path / "other") and live.exists()
    # and the next swap_in restores before it swaps
    final2 = tmp_path / "index2"
    _tree(set_aside_name(final2, _dead_pid()), "old")
    swap_in(_tree(tmp_path / ".index2.tmp", "new"), final2)
    assert (final2 / "sub" / "f.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir() if "index2" in p.name) == ["index2"]


def test_exchange_swaps_two_directories_when_the_system_can(tmp_path):
    a, b = _tree(tmp_path / "a", "A"), _tree(tmp_path / "b", "B")
    if not atomic.exchange(a, b):
        pytest.skip("no renameat2 RENAME_EXCHANGE here")
    assert (a / "sub" / "f.txt").read_text() == "B" and (b / "sub" / "f.txt").read_text() == "A"
    with pytest.raises(FileNotFoundError):
        atomic.exchange(a, tmp_path / "missing")
