"""Reading a local file without ever blocking: regular files only, and never more than a cap.

Every file the daemon, ``check`` and ``doctor`` read (configuration, included tenant files,
exports, PEM certificates and keys, the CA bundle, alias and table sources, postsrsd's
configuration) goes through :func:`read_capped`. A FIFO, a device or a socket where a file
should be would block ``open()`` or ``read()`` forever and with them the reactor (issue 16,
class 1), so the file is opened with ``O_NONBLOCK`` and refused unless ``fstat`` says it is a
regular file; a file larger than the cap is refused before it is read.

Refusals are :class:`RefusedFileError`, an ``OSError`` whose ``strerror`` is a short phrase
("not a regular file (a FIFO)"), so every caller's existing ``except OSError`` turns it into
its usual one-line error (exit 78 at start, a counted reload failure later).
"""

from __future__ import annotations

import errno
import os
import stat

from policyd.errors import ConfigError

#: Caps in bytes. Real files are far smaller: a configuration is a few KiB, an export of
#: thousands of connectors a few MiB, a PEM bundle under 1 MiB (the system CA bundle is ~220 KiB).
MAX_CONFIG_BYTES = 1 << 20
MAX_EXPORT_BYTES = 32 << 20
MAX_PEM_BYTES = 1 << 20
MAX_TABLE_SOURCE_BYTES = 64 << 20

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class RefusedFileError(OSError):
    """The path is not a regular file, or larger than its cap; ``strerror`` says which."""

    def __init__(self, path: str, phrase: str) -> None:
        super().__init__(errno.EINVAL, phrase, path)


def kind_of(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words ("a FIFO", "a directory"...)."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


def open_regular(path: str) -> int:
    """An ``O_RDONLY`` descriptor for ``path``, opened without blocking and checked regular.

    Raises ``OSError`` (``RefusedFileError`` for a FIFO, device, socket or directory). The
    descriptor is back in blocking mode: reads of a regular file never wait on a writer.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not stat.S_ISREG(mode):
            raise RefusedFileError(path, f"not a regular file ({kind_of(mode)})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_capped(path: str, cap: int) -> bytes:
    """The whole content of the regular file ``path``, at most ``cap`` bytes.

    Raises ``OSError``: the usual ones from ``open``, or ``RefusedFileError`` when the path is
    not a regular file or holds more than ``cap`` bytes (checked by ``fstat`` and again while
    reading, for a file that grows meanwhile).
    """
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(fd).st_size > cap:
            raise RefusedFileError(path, f"larger than the {_size(cap)} cap")
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise RefusedFileError(path, f"larger than the {_size(cap)} cap")
    return data


def _size(cap: int) -> str:
    if cap >= 1 << 20 and cap % (1 << 20) == 0:
        return f"{cap >> 20} MiB"
    if cap >= 1 << 10 and cap % (1 << 10) == 0:
        return f"{cap >> 10} KiB"
    return f"{cap} bytes"


def permission_fix(path: str) -> str:
    """The fix for a file the daemon may not read (its user is m365-policyd under systemd)."""
    return f"give the daemon's user read access, e.g. chgrp m365-policyd {path} && chmod g+r {path}"


def require_readable(path: str, config_file: str, key: str, what: str) -> None:
    """Raise ``ConfigError`` when the daemon itself cannot read ``path`` (issue 16, class 6).

    A missing file is left to the caller (for a certificate it is a prediction: Postfix cannot
    present it either); permission denied, a FIFO, a device or an oversized file is our own
    failure, never something Microsoft 365 sees, so it is a configuration error: exit 78 at
    start, a failed and counted reload later. The message names the file and the fix.
    """
    try:
        os.close(open_regular(path))
    except FileNotFoundError:
        return
    except PermissionError as error:
        raise ConfigError(
            config_file,
            key,
            f"cannot read the {what} {path} ({error.strerror}); {permission_fix(path)}",
        ) from None
    except OSError as error:
        raise ConfigError(
            config_file, key, f"cannot read the {what} {path} ({error.strerror}); fix the path"
        ) from None
