"""Atomic file writes: a reader (or a killed writer) never sees half a file."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (renames, new files) durable; a no-op where directories cannot be
    opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file under `path` (or `path` itself, a file), then every directory, deepest first."""
    path = Path(path)
    if not path.is_dir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    dirs = [path]
    for p in path.rglob("*"):
        if p.is_symlink():
            continue
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted(dirs, key=lambda d: -len(d.parts)):
        fsync_dir(d)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE). False where the
    system or the file system cannot (the caller then falls back to two renames)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def set_aside_name(final: str | os.PathLike, pid: int | None = None) -> Path:
    """Where `swap_in`'s fallback parks the old `final` between its two renames."""
    final = Path(final)
    return final.with_name(f".{final.name}.old-{os.getpid() if pid is None else pid}")


def restore_set_aside(final: str | os.PathLike) -> bool:
    """Undo a `swap_in` killed between its two renames: if `final` is missing and an old copy was set
    aside by a process that is gone, rename it back. Returns whether it did."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return False
    prefix = f".{final.name}.old-"
    for p in final.parent.iterdir():
        pid = p.name[len(prefix):]
        if p.name.startswith(prefix) and pid.isdigit() and not pid_alive(int(pid)):
            try:
                os.rename(p, final)
            except OSError:  # another process restored it first
                return final.exists()
            fsync_dir(final.parent)
            return True
    return False


def pid_alive(pid: int) -> bool:
    """Whether another process with this id runs (our own id counts as gone: what it left is ours)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def swap_in(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Replace `final` (a file or a directory; it may not exist) by `tmp`, durably and kill-safely.

    `tmp` is fsynced first, so a crash never leaves a renamed-in but unwritten copy. An existing
    `final` is exchanged with `tmp` in one atomic rename where the system can (Linux), then the old
    copy (now at `tmp`) is removed: a kill at any point leaves either the old or the new `final`.
    Elsewhere the old one is renamed aside first (os.replace cannot replace a non-empty directory);
    a kill between the two renames leaves `final` missing and the old copy set aside, which
    `restore_set_aside(final)` (called here, before anything else) renames back."""
    tmp, final = Path(tmp), Path(final)
    restore_set_aside(final)
    fsync_tree(tmp)
    if final.exists() and exchange(tmp, final):
        fsync_dir(final.parent)
        _remove(tmp)
        return
    old = set_aside_name(final)
    if final.exists():
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.rename(old, final)
        raise
    fsync_dir(final.parent)
    if old.exists():
        _remove(old)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def write_parquet_atomic(table, path: str | os.PathLike) -> None:
    """Write a pyarrow `table` as parquet to a temporary sibling, then rename it over `path`;
    an OSError becomes a `SearchR1Error` naming the file."""
    import pyarrow.parquet as pq

    from searchr1.errors import SearchR1Error

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise SearchR1Error(f"cannot write {path}: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
