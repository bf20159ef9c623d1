"""Opening the Postfix alias tables named by ``onprem.alias_maps`` (``virtual_alias_maps``).

``load_alias_maps`` opens the tables; ``policyd.rules.aliases.AliasMaps.expand`` turns one
recipient into the final addresses Postfix would deliver to. Source files (``texthash:/path``
or a bare ``/path``) are read into a dict here, in postmap(1)'s input format; every other
``type:name`` is asked through ``postmap -q`` (a blocking subprocess run by
``policyd.sources.postfix.run_tool``, with a timeout and a bounded cache), so any table Postfix
can read works.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from policyd.errors import AliasLookupError, ConfigError
from policyd.rules.aliases import (
    ADDRESS_LENGTH_LIMIT,
    EXPANSION_LIMIT,
    PATTERN_TYPES,
    RECURSION_LIMIT,
    AliasMaps,
    DictTable,
    Table,
    fold,
)
from policyd.rules.rewrite import SERVICE_TYPES
from policyd.sources.files import MAX_TABLE_SOURCE_BYTES, read_capped
from policyd.sources.postfix import Runner, find_tool, run_tool

#: The configuration key every load-time error names.
CONFIG_KEY = "onprem.alias_maps"

#: Table types stored in a file next to NAME, by suffix; postmap queries those files.
_INDEXED_SUFFIXES: dict[str, tuple[str, ...]] = {
    "hash": (".db",),
    "btree": (".db",),
    "lmdb": (".lmdb",),
    "cdb": (".cdb",),
    "dbm": (".dir", ".pag"),
    "sdbm": (".dir", ".pag"),
}

#: Table types whose NAME is itself a file (a pattern file, or a client configuration file).
_FILE_TYPES = frozenset({"regexp", "pcre", "cidr", "ldap", "mysql", "pgsql", "sqlite", "memcache"})

#: Postfix's ISSPACE is C isspace() in the "C" locale; Python's str.split() knows more.
_SPACE = " \t\n\v\f\r"
_SIMPLE_LINE = re.compile(r"([^ \t\n\v\f\r\"\\]+)(?:[ \t\n\v\f\r]+(.*))?", re.DOTALL)
_TYPE_NAME = re.compile(r"([a-z][a-z0-9_]*):(.+)", re.DOTALL)

#: A key no real address looks like, used to check at load time that postmap can open a table.
_PROBE_KEY = "m365-policyd-probe@example.invalid"


#: Estimated bytes a table's lookup cache may hold (keys and values, see ``_cache_cost``),
#: besides its entry count: an LDAP or SQL table may answer with long lists (issue 16).
CACHE_BYTES = 16 << 20

#: Estimated bytes around one cached lookup (the OrderedDict node and the two strings).
CACHE_ENTRY_BYTES = 200


def _cache_cost(key: str, value: str | None) -> int:
    return CACHE_ENTRY_BYTES + len(key) + (len(value) if value is not None else 0)


class _PostmapTable:
    """A table queried with ``postmap -q KEY TYPE:NAME``, with an LRU cache bounded in entries
    (``cache_size``) and in estimated bytes (``CACHE_BYTES``)."""

    def __init__(
        self,
        spec: str,
        table_type: str,
        *,
        postmap: str,
        timeout: float,
        cache_size: int,
        runner: Runner | None,
        config_directory: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self._config_args = ["-c", config_directory] if config_directory else []
        self.pattern = table_type in PATTERN_TYPES or table_type in SERVICE_TYPES
        #: A service answering over a socket (postsrsd): only whole addresses are asked, and
        #: not at load time (a service that is down fails lookups later, answered on_error).
        self.service = table_type in SERVICE_TYPES
        self._postmap = postmap
        self._timeout = timeout
        self._cache_size = cache_size
        self._runner = runner
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self._cache_bytes = 0
        # serve runs these lookups in worker threads (they block on postmap): the cache is
        # shared, so its updates are serialised; the postmap runs themselves are not.
        self._lock = threading.Lock()
        self._clock = clock
        self._timeouts = 0  # in a row
        self._open_until = float("-inf")  # the breaker is open until this clock reading

    def query(self, key: str) -> tuple[bool, str]:
        """Run postmap once: (found, value); raises AliasLookupError when the table fails.

        Circuit breaker (issue 16): after ``BREAKER_TIMEOUTS`` timeouts in a row the table is
        not asked for ``BREAKER_SECONDS``; every lookup meanwhile fails at once (the request
        answers ``on_error`` and is counted) instead of waiting ``timeout`` seconds each.
        """
        with self._lock:
            if self._clock() < self._open_until:
                raise _CircuitOpenError(
                    f"{self.spec}: not asked: postmap timed out {self._timeouts} times in a "
                    f"row; asking again {self._open_until - self._clock():.0f} s from now"
                )
        argv = [self._postmap, *self._config_args, "-q", key, self.spec]
        try:
            done = run_tool(argv, timeout=self._timeout, runner=self._runner)
        except subprocess.TimeoutExpired as error:
            with self._lock:
                self._timeouts += 1
                if self._timeouts >= BREAKER_TIMEOUTS:
                    self._open_until = self._clock() + BREAKER_SECONDS
            raise _LookupTimeoutError(
                f"{self.spec}: lookup of {key} timed out after {self._timeout:g} s"
            ) from error
        except OSError as error:
            raise AliasLookupError(f"{self.spec}: cannot run {self._postmap}: {error}") from error
        with self._lock:
            self._timeouts = 0
        stderr = (done.stderr or "").strip()
        if done.returncode == 0:
            return True, (done.stdout or "").rstrip("\n")
        # postmap exits 1 both for "not found" and for msg_fatal() ("open database ...",
        # "unsupported dictionary type"), so only a silent exit 1 means "not found".
        if done.returncode == 1 and not _is_failure(stderr):
            return False, ""
        lines = stderr.splitlines()
        detail = next(
            (line for line in lines if _is_failure(line)),
            lines[-1] if lines else f"exit status {done.returncode}",
        )
        raise AliasLookupError(f"{self.spec}: lookup of {key} failed: {detail}")

    def lookup(self, key: str) -> str | None:
        # Postfix folds keys for fixed-string tables itself; pattern tables see the key as is.
        cache_key = key if self.pattern else fold(key)
        cache = self._cache
        with self._lock:
            if cache_key in cache:
                cache.move_to_end(cache_key)
                return cache[cache_key]
        found, value = self.query(key)
        result = value if found else None
        if self._cache_size > 0:
            with self._lock:
                if cache_key in cache:  # another thread asked meanwhile
                    self._cache_bytes -= _cache_cost(cache_key, cache[cache_key])
                cache[cache_key] = result
                self._cache_bytes += _cache_cost(cache_key, result)
                while cache and (len(cache) > self._cache_size or self._cache_bytes > CACHE_BYTES):
                    self._cache_bytes -= _cache_cost(*cache.popitem(last=False))
        return result

    @property
    def cache_bytes(self) -> int:
        """Estimated bytes of the lookup cache (at most ``CACHE_BYTES``)."""
        return self._cache_bytes


class _LookupTimeoutError(AliasLookupError):
    """postmap did not answer in time (a slow LDAP or SQL server, for example)."""


class _CircuitOpenError(AliasLookupError):
    """The table was not asked: its postmap kept timing out (the circuit breaker is open)."""


#: Timeouts in a row that open a table's circuit breaker, and how long it stays open (s).
BREAKER_TIMEOUTS = 2
BREAKER_SECONDS = 30.0


def _is_failure(stderr: str) -> bool:
    return any(
        marker in line for line in stderr.splitlines() for marker in ("fatal:", "error:", "panic:")
    )


# --- loading ------------------------------------------------------------------------------


def parse_source(text: str, path: str) -> tuple[dict[str, str], list[str]]:
    """Parse postmap(1) input text: return (folded key -> value, warnings).

    Format (postmap(1) "INPUT FILE FORMAT", checked against Postfix 3.7's ``postmap -q
    texthash:``): ``key whitespace value``; lines whose first non-whitespace character is
    ``#`` and whitespace-only lines are ignored, also inside a logical line; a line that starts
    with whitespace continues the logical line (its text, leading whitespace included, is
    appended); the key may contain double-quoted parts (kept in the key, with ``\\`` escapes)
    so it can hold whitespace; key and value are trimmed. Keys are case-folded, values keep
    their case; the first of duplicate keys wins. ``key: value`` is NOT an alias(5) separator:
    the colon stays in the key (postmap warns "is this an alias file?"; so do we).

    Where postmap ignores a malformed line with a warning, we refuse the file: a key without
    a value, an unbalanced quote, or a continuation line before any entry raise ConfigError
    with the line number.
    """
    entries: dict[str, str] = {}
    warnings: list[str] = []
    logical: list[tuple[int, str]] = []  # (first line number, text)
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.lstrip(_SPACE)
        if not stripped or stripped[0] == "#":
            continue
        if len(stripped) == len(line):
            logical.append((number, line))
        elif logical:
            first, previous = logical[-1]
            logical[-1] = (first, previous + line)
        else:
            raise ConfigError(
                path,
                f"line {number}",
                "a line that starts with whitespace continues the previous entry, but there is"
                " none; remove the leading whitespace",
            )
    for number, line in logical:
        key, value = _split_entry(line, path, number)
        if key.endswith(":"):
            warnings.append(
                f'{path}, line {number}: record is in "key: value" format; is this an alias'
                " file? (postmap keeps the colon in the key, so it never matches)"
            )
        folded = fold(key)
        if folded in entries:
            warnings.append(f'{path}, line {number}: duplicate entry: "{folded}" (first one wins)')
            continue
        entries[folded] = value
    return entries, warnings


def _split_entry(line: str, path: str, number: int) -> tuple[str, str]:
    """Split one logical line into key and value (dict_thash.c + the quoted-key rules)."""
    simple = _SIMPLE_LINE.fullmatch(line)
    if simple is not None:
        key, rest = simple.group(1), simple.group(2) or ""
    else:
        in_quotes = False
        end = 0
        while end < len(line):
            ch = line[end]
            if ch == "\\":
                end += 1
                if end >= len(line):
                    break
            elif ch in _SPACE:
                if not in_quotes:
                    break
            elif ch == '"':
                in_quotes = not in_quotes
            end += 1
        if in_quotes:
            raise ConfigError(
                path, f"line {number}", "unbalanced '\"' in the key; close the quoted part"
            )
        key, rest = line[:end], line[end:]
    value = rest.strip(_SPACE)
    if not value:
        raise ConfigError(
            path,
            f"line {number}",
            f"key {key!r} has no value; expected format: key whitespace value",
        )
    return key, value


def _read_source(path: str, spec: str, config_key: str) -> str:
    try:
        data = read_capped(path, MAX_TABLE_SOURCE_BYTES)
    except FileNotFoundError:
        raise ConfigError(spec, config_key, f"{path} does not exist; fix the path") from None
    except OSError as error:
        raise ConfigError(
            spec, config_key, f"cannot read {path}: {error.strerror}; check permissions"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(path, f"line {line}", "not UTF-8; save the file as UTF-8") from None


#: Seconds one ``postmap -q`` may take. A lookup still running at shutdown holds the exit for
#: up to this long (its worker thread is joined), and SIGTERM must exit within 5 s.
LOOKUP_TIMEOUT = 3.0


def load_alias_maps(
    specs: Sequence[str],
    *,
    postmap: str = "postmap",
    timeout: float = LOOKUP_TIMEOUT,
    cache_size: int = 10000,
    runner: Runner | None = None,
    recursion_limit: int = RECURSION_LIMIT,
    expansion_limit: int = EXPANSION_LIMIT,
    address_length_limit: int = ADDRESS_LENGTH_LIMIT,
    recipient_delimiter: str = "",
    propagate_extensions: bool = True,
    config_directory: str = "",
    config_key: str = CONFIG_KEY,
) -> AliasMaps:
    """Open every table of ``onprem.alias_maps``; raises ConfigError naming the bad one.

    ``texthash:/path`` and a bare ``/path`` are parsed here; other ``type:name`` tables are
    checked once with ``postmap -q`` (an unsupported type or an unopenable file is a
    ConfigError now, not a lookup error later) and queried through it afterwards.
    ``recipient_delimiter`` is Postfix's parameter of that name (``postconf -h
    recipient_delimiter``); the default "" means no address extensions.
    """
    tables: list[Table] = []
    watched: list[str] = []
    warnings: list[str] = []
    for spec in specs:
        opened = open_table(
            spec,
            config_key=config_key,
            postmap=postmap,
            timeout=timeout,
            cache_size=cache_size,
            runner=runner,
            config_directory=config_directory,
        )
        tables.append(opened.table)
        watched.extend(opened.files)
        warnings.extend(opened.warnings)
    return AliasMaps(
        specs,
        tables,
        watched_files=watched,
        warnings=warnings,
        recursion_limit=recursion_limit,
        expansion_limit=expansion_limit,
        address_length_limit=address_length_limit,
        recipient_delimiter=recipient_delimiter,
        propagate_extensions=propagate_extensions,
    )


@dataclass(frozen=True, slots=True)
class OpenedTable:
    """One opened table, the files to watch for it, and postmap-style warnings."""

    table: Table
    files: tuple[str, ...]
    warnings: tuple[str, ...]


def open_table(
    spec: str,
    *,
    config_key: str,
    postmap: str = "postmap",
    timeout: float = LOOKUP_TIMEOUT,
    cache_size: int = 10000,
    runner: Runner | None = None,
    config_directory: str = "",
) -> OpenedTable:
    """Open one Postfix table; raises ConfigError naming ``spec`` and ``config_key``.

    ``texthash:/path`` and a bare ``/path`` are parsed here; other ``type:name`` tables are
    checked once with ``postmap -q`` (an unsupported type or an unopenable file is a
    ConfigError now, not a lookup error later; a ``SERVICE_TYPES`` table is not asked until
    used) and queried through it afterwards, with ``postmap -c config_directory`` when one is
    given (so the table sees that instance's main.cf, as Postfix's own lookups do).
    """
    text = spec.strip() if isinstance(spec, str) else ""
    if not text:
        raise ConfigError(
            repr(spec), config_key, 'empty table; use "texthash:/path", "/path" or "type:name"'
        )
    if text.startswith("/") or text.startswith("texthash:"):
        path = text.removeprefix("texthash:")
        if not path:
            raise ConfigError(spec, config_key, 'no file name; use "texthash:/path"')
        entries, file_warnings = parse_source(_read_source(path, spec, config_key), path)
        return OpenedTable(DictTable(spec, entries), (path,), tuple(file_warnings))
    match = _TYPE_NAME.fullmatch(text)
    if match is None:
        raise ConfigError(
            spec,
            config_key,
            'not a Postfix table; use "texthash:/path", an absolute "/path" or "type:name"'
            ' (for example "hash:/etc/postfix/virtual")',
        )
    table_type, name = match.group(1), match.group(2)
    inner_type, inner_name = table_type, name
    while inner_type == "proxy":
        inner = _TYPE_NAME.fullmatch(inner_name)
        if inner is None:
            raise ConfigError(spec, config_key, 'proxy needs "proxy:type:name"')
        inner_type, inner_name = inner.group(1), inner.group(2)
    files = _table_files(spec, inner_type, inner_name, config_key)
    found = postmap if runner is not None else find_tool(postmap)
    if found is None:
        raise ConfigError(
            spec,
            config_key,
            f"{postmap} not found, needed to read {table_type}: tables; install postfix,"
            ' or use a "texthash:" source file',
        )
    table = _PostmapTable(
        spec,
        inner_type,
        postmap=found,
        timeout=timeout,
        cache_size=cache_size,
        runner=runner,
        config_directory=config_directory,
    )
    if table.service:
        return OpenedTable(table, tuple(files), ())
    try:
        table.query(_PROBE_KEY)
    except _LookupTimeoutError:
        pass  # a slow server now may answer later; lookups report it then
    except AliasLookupError as error:
        raise ConfigError(spec, config_key, f"postmap cannot use this table: {error}") from None
    return OpenedTable(table, tuple(files), ())


def _table_files(spec: str, table_type: str, name: str, config_key: str) -> list[str]:
    """The files behind a table (to watch for reloads); ConfigError when one is missing."""
    suffixes = _INDEXED_SUFFIXES.get(table_type)
    if suffixes is not None:
        files = [name + suffix for suffix in suffixes]
        for file in files:
            if not os.path.exists(file):
                raise ConfigError(
                    spec,
                    config_key,
                    f"{file} does not exist; build it with `postmap {table_type}:{name}`",
                )
        return files
    if table_type in _FILE_TYPES and name.startswith("/"):
        if not os.path.exists(name):
            raise ConfigError(spec, config_key, f"{name} does not exist; fix the path")
        return [name]
    return []
