"""Forward resolution through Postfix alias tables, the way ``virtual_alias_maps`` expands.

``load_alias_maps`` opens the tables named by ``onprem.alias_maps``; ``AliasMaps.expand``
turns one recipient into the final addresses Postfix would deliver to. Domain layer: no reactor
and no clock. Source files (``texthash:/path`` or a bare ``/path``) are read into a dict here,
in postmap(1)'s input format; every other ``type:name`` is asked through ``postmap -q`` (a
blocking subprocess, with a timeout and a bounded cache), so any table Postfix can read works.

The expansion follows Postfix 3.x exactly where it matters for a prediction:

- ``src/cleanup/cleanup_map1n.c`` (``cleanup_map1n_internal``): the address vector is rewritten
  in place; the first result replaces the address and is looked up again, further results are
  appended and expanded when their turn comes; an address that appears in its own expansion is
  kept and not expanded again (``been_here``); the recursion and expansion limits defer the mail
  with "4.6.0 Alias expansion error", so we raise ``AliasLookupError`` with Postfix's wording.
- ``src/global/mail_addr_find.c``: ``user@domain`` is looked up in every table in order, then
  ``user@domain`` without its address extension (when ``recipient_delimiter`` is set), then the
  ``@domain`` catch-all in every table. Partial keys are never given to pattern tables
  (``regexp:``, ``pcre:``, ``cidr:``), as ``maps_find(..., DICT_FLAG_FIXED)`` does.
- ``src/global/mail_addr_map.c``: a result of the form ``@otherdomain`` becomes
  ``user@otherdomain``; the unmatched extension is propagated to every result
  (``propagate_unmatched_extensions`` contains ``virtual`` by default).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from policyd.errors import AliasLookupError, ConfigError

#: The configuration key every load-time error names.
CONFIG_KEY = "onprem.alias_maps"

#: Postfix's defaults (postconf -d): virtual_alias_recursion_limit, virtual_alias_expansion_limit,
#: virtual_alias_address_length_limit.
RECURSION_LIMIT = 1000
EXPANSION_LIMIT = 1000
ADDRESS_LENGTH_LIMIT = 1000

#: The table title Postfix puts in its warnings ("unreasonable virtual_alias_maps map ...").
_TITLE = "virtual_alias_maps"

#: Table types whose keys are patterns: only the full address is looked up in them.
PATTERN_TYPES = frozenset({"regexp", "pcre", "cidr"})

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
#: Results are separated by commas and/or whitespace; a double-quoted part stays whole.
_RESULT_TOKEN = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^\s,"]+|")+')

#: A key no real address looks like, used to check at load time that postmap can open a table.
_PROBE_KEY = "m365-policyd-probe@example.invalid"

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def fold(text: str) -> str:
    """Fold a lookup key as Postfix does with smtputf8_enable=yes (full Unicode case folding)."""
    return text.casefold()


class _Table(Protocol):
    """One table: ``lookup`` returns the raw value, None when absent; raises on failure."""

    @property
    def spec(self) -> str: ...
    @property
    def pattern(self) -> bool: ...

    def lookup(self, key: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _DictTable:
    """A source file read into memory; keys are already folded."""

    spec: str
    entries: dict[str, str]
    pattern: bool = False

    def lookup(self, key: str) -> str | None:
        return self.entries.get(fold(key))


class _PostmapTable:
    """A table queried with ``postmap -q KEY TYPE:NAME``, with a bounded LRU cache."""

    def __init__(
        self,
        spec: str,
        table_type: str,
        *,
        postmap: str,
        timeout: float,
        cache_size: int,
        runner: Runner,
    ) -> None:
        self.spec = spec
        self.pattern = table_type in PATTERN_TYPES
        self._postmap = postmap
        self._timeout = timeout
        self._cache_size = cache_size
        self._runner = runner
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        # serve runs these lookups in worker threads (they block on postmap): the cache is
        # shared, so its updates are serialised; the postmap runs themselves are not.
        self._lock = threading.Lock()

    def query(self, key: str) -> tuple[bool, str]:
        """Run postmap once: (found, value); raises AliasLookupError when the table fails."""
        argv = [self._postmap, "-q", key, self.spec]
        try:
            done = self._runner(
                argv, capture_output=True, text=True, timeout=self._timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise _LookupTimeoutError(
                f"{self.spec}: lookup of {key} timed out after {self._timeout:g} s"
            ) from error
        except OSError as error:
            raise AliasLookupError(f"{self.spec}: cannot run {self._postmap}: {error}") from error
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
                cache[cache_key] = result
                if len(cache) > self._cache_size:
                    cache.popitem(last=False)
        return result


class _LookupTimeoutError(AliasLookupError):
    """postmap did not answer in time (a slow LDAP or SQL server, for example)."""


def _is_failure(stderr: str) -> bool:
    return any(
        marker in line for line in stderr.splitlines() for marker in ("fatal:", "error:", "panic:")
    )


class AliasMaps:
    """The configured alias tables, ready to expand recipients (``virtual_alias_maps``)."""

    def __init__(
        self,
        specs: Sequence[str] = (),
        tables: Sequence[_Table] = (),
        *,
        watched_files: Sequence[str] = (),
        warnings: Sequence[str] = (),
        recursion_limit: int = RECURSION_LIMIT,
        expansion_limit: int = EXPANSION_LIMIT,
        address_length_limit: int = ADDRESS_LENGTH_LIMIT,
        recipient_delimiter: str = "",
        propagate_extensions: bool = True,
    ) -> None:
        self.specs: tuple[str, ...] = tuple(specs)
        self.watched_files: tuple[str, ...] = tuple(dict.fromkeys(watched_files))
        #: postmap-style warnings about the source files (duplicate keys, "key: value" lines)
        self.warnings: tuple[str, ...] = tuple(warnings)
        self.recursion_limit = recursion_limit
        self.expansion_limit = expansion_limit
        self.address_length_limit = address_length_limit
        self.recipient_delimiter = recipient_delimiter
        self.propagate_extensions = propagate_extensions
        self._tables: tuple[_Table, ...] = tuple(tables)
        self.uses_subprocess: bool = any(isinstance(t, _PostmapTable) for t in self._tables)
        # When every table is in memory, one merged dict (first table wins for each key) answers
        # "user@domain in any table, then @domain in any table" with one lookup per key.
        self._merged: dict[str, str] | None = None
        self._has_catchall = True
        if not self.uses_subprocess:
            merged: dict[str, str] = {}
            for table in self._tables:
                assert isinstance(table, _DictTable)
                for key, value in table.entries.items():
                    merged.setdefault(key, value)
            self._merged = merged
            self._has_catchall = any(key.startswith("@") for key in merged)

    # --- hot path ---------------------------------------------------------------------------

    def expand(self, address: str) -> tuple[str, ...]:
        """Return the final addresses for ``address``; ``(address,)`` when no table has it.

        Raises AliasLookupError when a table fails or a Postfix limit is hit: Postfix itself
        defers such a message ("4.6.0 Alias expansion error").
        """
        merged = self._merged
        if merged is not None:
            # Fast path: most recipients have no entry. Fold only when needed, then look up the
            # full key and, only if some table has catch-alls, the @domain key.
            if not merged:
                return (address,)
            key = address if address.islower() and address.isascii() else fold(address)
            if key not in merged:
                at = key.rfind("@")
                if (at < 0 or not self._has_catchall or key[at:] not in merged) and not (
                    self.recipient_delimiter and any(c in key for c in self.recipient_delimiter)
                ):
                    return (address,)
        return self._expand(address)

    # --- the algorithm ----------------------------------------------------------------------

    def _expand(self, address: str) -> tuple[str, ...]:
        # cleanup_map1n_internal(): rewrite the vector in place, index it explicitly because
        # it grows while we walk it.
        argv = [address]
        been_here: set[str] = set()  # BH_FLAG_FOLD: compared after case folding
        arg = 0
        while arg < len(argv):
            if len(argv) > self.expansion_limit:
                raise AliasLookupError(
                    f"unreasonable {_TITLE} map expansion size for {address}"
                    " -- message not accepted, try again later"
                )
            count = 0
            while True:
                current = argv[arg]
                # Don't expand an address that already expanded into itself.
                if fold(current) in been_here:
                    break
                if count >= self.recursion_limit:
                    raise AliasLookupError(
                        f"unreasonable {_TITLE} map nesting for {address}"
                        " -- message not accepted, try again later"
                    )
                results = self._map(current)
                if results is None:
                    break
                saved_lhs = fold(current)
                for i, result in enumerate(results):
                    if len(result) > self.address_length_limit:
                        raise AliasLookupError(
                            f"unreasonable {_TITLE} result {result[:300]}..."
                            " -- message not accepted, try again later"
                        )
                    if i == 0:
                        argv[arg] = result
                    else:
                        argv.append(result)
                    # Allow an address to expand into itself once.
                    if fold(result) == saved_lhs:
                        been_here.add(saved_lhs)
                count += 1
            arg += 1
        # Postfix's cleanup_out_recipient() drops duplicate recipients (case-insensitively).
        seen: set[str] = set()
        final: list[str] = []
        for item in argv:
            folded = fold(item)
            if folded not in seen:
                seen.add(folded)
                final.append(item)
        return tuple(final)

    def _map(self, address: str) -> list[str] | None:
        """mail_addr_map(): the results for one address, or None when no table has it."""
        found = self._find(address)
        if found is None:
            return None
        value, extension = found
        if value.startswith("@"):
            # Prepend the original user, without its unmatched extension, to @otherdomain.
            at = address.rfind("@")
            user = address[:at] if at >= 0 else address
            if extension:
                user = user[: len(user) - len(extension)]
            value = user + value
        results = _split_results(value)
        if not results:
            raise AliasLookupError(
                f"{_TITLE} lookup of {address} returns non-address result {value!r}"
            )
        if extension and self.propagate_extensions:
            results = [_add_extension(result, extension) for result in results]
        return results

    def _find(self, address: str) -> tuple[str, str] | None:
        """mail_addr_find(): (value, unmatched extension) for the first key some table has.

        The bare ``user`` key applies only when the domain is $myorigin, $mydestination or a
        local interface; we do not know those, so it is skipped (an address without a domain
        is looked up as is, which is what that step would find).
        """
        stripped, extension = self._strip_extension(address)
        value = self._lookup(address, partial=False)
        if value is not None:
            return value, ""
        if stripped is not None:
            value = self._lookup(stripped, partial=True)
            if value is not None:
                return value, extension
        at = address.rfind("@")
        if at >= 0:
            value = self._lookup(address[at:], partial=True)
            if value is not None:
                return value, ""
        return None

    def _lookup(self, key: str, *, partial: bool) -> str | None:
        """maps_find(): the first table that has ``key``; partial keys skip pattern tables."""
        merged = self._merged
        if merged is not None:
            return merged.get(fold(key))
        for table in self._tables:
            if partial and table.pattern:
                continue
            value = table.lookup(key)
            if value is not None:
                return value
        return None

    def _strip_extension(self, address: str) -> tuple[str | None, str]:
        """strip_addr() + split_addr(): (address without extension, extension) or (None, "")."""
        delimiters = self.recipient_delimiter
        if not delimiters:
            return None, ""
        at = address.rfind("@")
        local, domain = (address[:at], address[at:]) if at >= 0 else (address, "")
        lowered = local.lower()
        if lowered in ("postmaster", "mailer-daemon", "double-bounce"):
            return None, ""
        # owner_request_special = yes (the default): keep owner-foo and foo-request whole.
        if "-" in delimiters and (
            lowered.startswith("owner-") or (len(lowered) > 8 and lowered.endswith("-request"))
        ):
            return None, ""
        cut = next((i for i, ch in enumerate(local) if ch in delimiters), -1)
        if cut <= 0:  # no delimiter, or the result would have a null localpart
            return None, ""
        return local[:cut] + domain, local[cut:]


def _split_results(value: str) -> list[str]:
    """Split a lookup result into addresses: commas and/or whitespace, quotes kept whole."""
    return _RESULT_TOKEN.findall(value)


def _add_extension(address: str, extension: str) -> str:
    """Insert the unmatched extension before the domain (mail_addr_crunch())."""
    at = address.rfind("@")
    if at < 0:
        return address + extension
    return address[:at] + extension + address[at:]


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


def _read_source(path: str, spec: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(spec, CONFIG_KEY, f"{path} does not exist; fix the path") from None
    except OSError as error:
        raise ConfigError(
            spec, CONFIG_KEY, f"cannot read {path}: {error.strerror}; check permissions"
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
) -> AliasMaps:
    """Open every table of ``onprem.alias_maps``; raises ConfigError naming the bad one.

    ``texthash:/path`` and a bare ``/path`` are parsed here; other ``type:name`` tables are
    checked once with ``postmap -q`` (an unsupported type or an unopenable file is a
    ConfigError now, not a lookup error later) and queried through it afterwards.
    ``recipient_delimiter`` is Postfix's parameter of that name (``postconf -h
    recipient_delimiter``); the default "" means no address extensions.
    """
    tables: list[_Table] = []
    watched: list[str] = []
    warnings: list[str] = []
    for spec in specs:
        text = spec.strip() if isinstance(spec, str) else ""
        if not text:
            raise ConfigError(
                repr(spec), CONFIG_KEY, 'empty table; use "texthash:/path", "/path" or "type:name"'
            )
        if text.startswith("/") or text.startswith("texthash:"):
            path = text.removeprefix("texthash:")
            if not path:
                raise ConfigError(spec, CONFIG_KEY, 'no file name; use "texthash:/path"')
            entries, file_warnings = parse_source(_read_source(path, spec), path)
            tables.append(_DictTable(spec, entries))
            watched.append(path)
            warnings.extend(file_warnings)
            continue
        match = _TYPE_NAME.fullmatch(text)
        if match is None:
            raise ConfigError(
                spec,
                CONFIG_KEY,
                'not a Postfix table; use "texthash:/path", an absolute "/path" or "type:name"'
                ' (for example "hash:/etc/postfix/virtual")',
            )
        table_type, name = match.group(1), match.group(2)
        inner_type, inner_name = table_type, name
        while inner_type == "proxy":
            inner = _TYPE_NAME.fullmatch(inner_name)
            if inner is None:
                raise ConfigError(spec, CONFIG_KEY, 'proxy needs "proxy:type:name"')
            inner_type, inner_name = inner.group(1), inner.group(2)
        files = _table_files(spec, inner_type, inner_name)
        watched.extend(files)
        if runner is None and shutil.which(postmap) is None:
            raise ConfigError(
                spec,
                CONFIG_KEY,
                f"{postmap} not found, needed to read {table_type}: tables; install postfix,"
                ' or use a "texthash:" source file',
            )
        table = _PostmapTable(
            spec,
            inner_type,
            postmap=postmap,
            timeout=timeout,
            cache_size=cache_size,
            runner=runner or subprocess.run,
        )
        try:
            table.query(_PROBE_KEY)
        except _LookupTimeoutError:
            pass  # a slow server now may answer later; lookups report it then
        except AliasLookupError as error:
            raise ConfigError(spec, CONFIG_KEY, f"postmap cannot use this table: {error}") from None
        tables.append(table)
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


def _table_files(spec: str, table_type: str, name: str) -> list[str]:
    """The files behind a table (to watch for reloads); ConfigError when one is missing."""
    suffixes = _INDEXED_SUFFIXES.get(table_type)
    if suffixes is not None:
        files = [name + suffix for suffix in suffixes]
        for file in files:
            if not os.path.exists(file):
                raise ConfigError(
                    spec,
                    CONFIG_KEY,
                    f"{file} does not exist; build it with `postmap {table_type}:{name}`",
                )
        return files
    if table_type in _FILE_TYPES and name.startswith("/"):
        if not os.path.exists(name):
            raise ConfigError(spec, CONFIG_KEY, f"{name} does not exist; fix the path")
        return [name]
    return []
