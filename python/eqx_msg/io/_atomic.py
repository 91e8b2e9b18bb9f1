"""Atomic replacement of a file: a temporary in the same directory, fsynced, renamed over the
target; temporaries of writers that died are removed by the next save."""

from __future__ import annotations

import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable
from typing import BinaryIO

_WRITE_BUFFER = 1 << 20


def replace(target: str, write: Callable[[BinaryIO], None]) -> None:
    """Make `target` hold what `write(f)` writes into `f`, atomically.

    `f` is a new file in the same directory: unnamed until it is complete where Linux's O_TMPFILE
    allows, else named for its host and process. It is fsynced and renamed over the target, then
    the directory is fsynced; on any error the previous file is untouched and nothing is left
    behind. Temporaries of writers that died (their process gone) are removed afterwards. The
    target keeps its permissions; a symlink of the caller's stays a symlink (its target is
    replaced), one owned by another user is not followed.
    """
    path = _own_target(os.path.abspath(target))
    directory, name = os.path.split(path)
    fd, tmp = _temporary(directory, name)
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if tmp is None:  # an unnamed file: named only now, complete, for the rename
                tmp = _name_unnamed(f.fileno(), directory, name)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    _remove_dead_temporaries(directory)


# Temporary files of `save`: `.{target}.{host}~{pid}.{random}.eqx-msg-tmp`, so that a writer killed
# mid-save (SIGKILL, power loss) can be told from a live one, and its file removed by a later save.
_TEMP_SUFFIX = ".eqx-msg-tmp"

_TEMP_NAME = re.compile(
    r"^\..*\.(?P<host>[A-Za-z0-9-]+)~(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.eqx-msg-tmp$"
)

_USE_O_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def _writer_tag() -> str:
    """`host~pid` of this process, as temporary names hold it (the pid read now: after a fork too)."""
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname()) or 'host'}~{os.getpid()}"


def _temporary(directory: str, name: str) -> tuple[int, str | None]:
    """A file to write the new contents into: `(fd, None)` for an unnamed one (Linux's O_TMPFILE,
    where the filesystem has it: a writer killed while writing leaves nothing), else `(fd, path)` of
    a named temporary tagged with this host and process."""
    if _USE_O_TMPFILE:
        try:
            return os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600), None
        except OSError:  # a filesystem without O_TMPFILE (EOPNOTSUPP, EISDIR, ...)
            pass
    prefix = f".{name}.{_writer_tag()}."
    return tempfile.mkstemp(prefix=prefix, suffix=_TEMP_SUFFIX, dir=directory)


def _name_unnamed(fd: int, directory: str, name: str) -> str:
    """Give the unnamed file `fd` a tagged temporary name in `directory` (to rename it from).

    linkat(2) with AT_SYMLINK_FOLLOW on /proc/self/fd/N, which Python's `os.link` calls only when
    given a directory fd (plain link(2) would link the /proc symlink itself).
    """
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        for _ in range(100):
            tmp = f".{name}.{_writer_tag()}.{os.urandom(6).hex()}{_TEMP_SUFFIX}"
            try:
                os.link(f"/proc/self/fd/{fd}", tmp, src_dir_fd=directory_fd,
                        dst_dir_fd=directory_fd, follow_symlinks=True)  # fmt: skip
                return os.path.join(directory, tmp)
            except FileExistsError:
                continue
    finally:
        os.close(directory_fd)
    raise FileExistsError(f"no free temporary name in {directory}")  # pragma: no cover


def _remove_dead_temporaries(directory: str) -> None:
    """Remove the temporaries of `save`s in `directory` whose writer is gone: tagged with this host,
    owned by this user, and naming a process that no longer exists. Never a live writer's (a process
    of that id exists, ours or not), another host's, another user's, or one named otherwise."""
    host, _ = _writer_tag().split("~")
    getuid = getattr(os, "getuid", None)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        found = _TEMP_NAME.match(entry.name) if entry.name.endswith(_TEMP_SUFFIX) else None
        if found is None or found["host"] != host:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or (getuid is not None and info.st_uid != getuid()):
                continue
            if _alive(int(found["pid"])):
                continue
            os.unlink(entry.path)
        except OSError:  # gone already (another save cleaning up), or not ours to remove
            continue


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists (ours or another user's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can ask about: leave its file
    return True


def _own_target(path: str) -> str:
    """The file `save` replaces: a symlink's target when the link is ours, else the path itself.

    A link someone else planted (say in a shared /tmp) is not followed, as the kernel's
    protected_symlinks would refuse for open(): the link itself is replaced, or the rename fails.
    """
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        return path
    getuid = getattr(os, "getuid", None)  # (POSIX only: elsewhere a link is never followed)
    if stat.S_ISLNK(link.st_mode) and getuid is not None and link.st_uid == getuid():
        return os.path.realpath(path)
    return path


def _mode_for(path: str) -> int:
    """Keep an existing file's permissions; new files get 0o666 less the umask, like open()."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
