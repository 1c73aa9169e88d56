"""Files written so that a reader, a crash or a signal finds the old bytes or the new ones.

Every file the command line writes for the operator (the config under `--apply` and its
backups, service files, HTML reports) goes through here:

- the new bytes go to a file in the target's own folder, are fsynced, and only then take the
  target's name by a rename, after which the folder is fsynced (the rename is durable);
- on Linux that file has no name at all until it is complete (`O_TMPFILE`): a `kill -9` during
  the write leaves nothing behind. It is linked under a temporary name only for the instant
  before the rename. Elsewhere (macOS) it is a named temporary file from the start;
- temporary files left by a process that died are removed by the next write to that folder;
- the whole write is one deferred step for the stop signals: a Ctrl-C during it is honoured at
  the commit point, just before the rename, so the target is either untouched (`Interrupted`)
  or complete;
- `mode` is applied exactly (not narrowed by the umask); `None` gives what a plain `open`
  would (0o666 less the umask).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path

from macprovider.actors.stop_signals import STOP

_PLAIN_FILE_MODE = 0o666
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")
# Filesystems without O_TMPFILE answer with one of these; the named temp file then serves.
_NO_TMPFILE = (errno.EISDIR, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOENT)


def replace_file(target: Path, data: bytes, mode: int | None) -> None:
    """Writes `data` as `target` atomically (see the module docstring); raises OSError, or
    `Interrupted` when a stop signal came first (the target then is as it was)."""
    folder = target.parent
    _remove_stale_temps(folder, target.name)
    with STOP.deferred():
        fd, temp = _open_temp(folder, target.name)
        try:
            _write_synced(fd, data, mode)
            STOP.raise_if_requested()
            if temp is None:
                temp = _link_temp(fd, folder, target.name)
            os.replace(temp, target)
        except BaseException:
            if temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            raise
        finally:
            os.close(fd)
    fsync_folder(folder)


def create_file(path: Path, data: bytes, mode: int) -> bool:
    """Creates `path` holding `data`, complete or not at all; False when `path` exists.

    On Linux the name appears only once the bytes are written and fsynced (a hard link of an
    unnamed file, which never replaces an existing name); elsewhere the file is created
    exclusively, then written, and removed again if the write fails.
    """
    fd = _open_unnamed(path.parent)
    if fd is not None:
        try:
            _write_synced(fd, data, mode)
            try:
                _link(fd, path)
            except FileExistsError:
                return False
            return True
        finally:
            os.close(fd)
    try:
        # 0o600 until the exact mode is set: a token is never readable by others, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        _write_synced(fd, data, mode)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return True


def fsync_folder(folder: Path) -> None:
    # Makes a rename durable. Some filesystems refuse to fsync (or a folder to be opened); the
    # rename has happened by then, so that is no reason to report the write as failed.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _open_temp(folder: Path, name: str) -> tuple[int, Path | None]:
    """An unnamed file in `folder` where the system has them, else a named temp file."""
    fd = _open_unnamed(folder)
    if fd is not None:
        return fd, None
    temp = folder / _temp_name(name)
    return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), temp


def _open_unnamed(folder: Path) -> int | None:
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        return os.open(folder, flag | os.O_WRONLY, 0o600)
    except OSError as err:
        if err.errno in _NO_TMPFILE:
            return None
        raise


def _link_temp(fd: int, folder: Path, name: str) -> Path:
    temp = folder / _temp_name(name)
    _link(fd, temp)
    return temp


def _link(fd: int, dest: Path) -> None:
    """Gives the unnamed file `fd` the name `dest`; FileExistsError if taken."""
    folder = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Given a directory fd, CPython calls linkat(AT_SYMLINK_FOLLOW), which follows the
        # /proc link to the unnamed file; plain link() would try to link the /proc entry itself.
        os.link(f"/proc/self/fd/{fd}", dest.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


def _temp_name(name: str) -> str:
    # The pid tells a later write whether the process that made it is still alive.
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _write_synced(fd: int, data: bytes, mode: int | None) -> None:
    if mode is None:
        mode = _PLAIN_FILE_MODE & ~_current_umask()
    os.fchmod(fd, mode)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_temps(folder: Path, name: str) -> None:
    """Removes temp files for `name` whose writer has died (a `kill -9` mid-write)."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            match = _TEMP_NAME.fullmatch(entry.name)
            if match and match["name"] == name and not pid_alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    entry.unlink()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts as alive: not ours to judge)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
