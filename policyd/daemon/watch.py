"""Noticing changed files for the ``reload_interval`` check: stamps, not contents.

A file's stamp is (mtime in ns, size, inode), or None when it is missing; ``FileWatcher``
remembers the stamps of every file the current state was built from and says which changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from policyd.sources.state import State

#: What a file looks like to the change detector: (mtime in ns, size, inode); None = missing.
Stamp = tuple[int, int, int] | None


StatFunction = Callable[[str], os.stat_result]


def file_stamp(path: str, stat: StatFunction = os.stat) -> Stamp:
    """``(mtime_ns, size, inode)`` of ``path``, or None when it does not exist or cannot be read."""
    try:
        info = stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class FileWatcher:
    """Remembers how a set of files looked and says which of them changed since.

    A change is any difference in (mtime, size, inode), so an editor that writes a new file and
    renames it over the old one is seen even within the same mtime second; a file that appears
    or disappears counts as changed too.
    """

    def __init__(self, stat: StatFunction = os.stat) -> None:
        self._stat = stat
        self._stamps: dict[str, Stamp] = {}
        self._settling: dict[str, Stamp] | None = None  # changed stamps seen by settled()

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._stamps)

    def stamp(self, path: str) -> Stamp:
        """The current stamp of one path."""
        return file_stamp(path, self._stat)

    def snapshot(self, paths: Iterable[str]) -> dict[str, Stamp]:
        """The current stamp of each path (None for a missing file)."""
        return {path: file_stamp(path, self._stat) for path in dict.fromkeys(paths)}

    def watch(self, stamps: Mapping[str, Stamp]) -> None:
        """From now on compare against ``stamps`` (usually taken just before loading)."""
        self._stamps = dict(stamps)
        self._settling = None

    def settled(self) -> list[str]:
        """``changed()``, but only once the same new stamps were seen on two calls in a row."""
        now = {path: file_stamp(path, self._stat) for path in self._stamps}
        changed = {path: stamp for path, stamp in now.items() if stamp != self._stamps[path]}
        if not changed:
            self._settling = None
            return []
        if changed != self._settling:
            self._settling = changed  # still changing, or first seen: look again next time
            return []
        self._settling = None
        return list(changed)

    def changed(self) -> list[str]:
        """The watched paths whose stamp differs from the remembered one, in watch order."""
        return [path for path, old in self._stamps.items() if file_stamp(path, self._stat) != old]


def watched_paths(state: State) -> list[str]:
    """Every file whose change triggers a reload: config, exports, certificate, alias maps and,
    with ``[postfix]``, main.cf, master.cf and the tables routing reads."""
    return [str(p) for p in state.watched_files if p]
