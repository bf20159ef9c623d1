"""Forward resolution the way Postfix's ``virtual_alias_maps`` expands: pure, no I/O.

``AliasMaps.expand`` turns one recipient into the final addresses Postfix would deliver to,
over tables that ``policyd.sources.tables`` opened (in memory, or asked through ``postmap -q``).
Nothing here reads a file, runs a program or reads a clock.

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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from policyd.errors import AliasLookupError

#: Postfix's defaults (postconf -d): virtual_alias_recursion_limit, virtual_alias_expansion_limit,
#: virtual_alias_address_length_limit.
RECURSION_LIMIT = 1000


EXPANSION_LIMIT = 1000


ADDRESS_LENGTH_LIMIT = 1000


#: The table title Postfix puts in its warnings ("unreasonable virtual_alias_maps map ...").
_TITLE = "virtual_alias_maps"


#: Table types whose keys are patterns: only the full address is looked up in them.
PATTERN_TYPES = frozenset({"regexp", "pcre", "cidr"})


#: Results are separated by commas and/or whitespace; a double-quoted part stays whole.
_RESULT_TOKEN = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^\s,"]+|")+')


def fold(text: str) -> str:
    """Fold a lookup key as Postfix does with smtputf8_enable=yes (full Unicode case folding)."""
    return text.casefold()


class Table(Protocol):
    """One table: ``lookup`` returns the raw value, None when absent; raises on failure."""

    @property
    def spec(self) -> str: ...
    @property
    def pattern(self) -> bool: ...

    def lookup(self, key: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class DictTable:
    """A source file read into memory; keys are already folded."""

    spec: str
    entries: dict[str, str]
    pattern: bool = False

    def lookup(self, key: str) -> str | None:
        return self.entries.get(fold(key))


class AliasMaps:
    """The configured alias tables, ready to expand recipients (``virtual_alias_maps``)."""

    def __init__(
        self,
        specs: Sequence[str] = (),
        tables: Sequence[Table] = (),
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
        self._tables: tuple[Table, ...] = tuple(tables)
        self.uses_subprocess: bool = any(not isinstance(t, DictTable) for t in self._tables)
        # When every table is in memory, one merged dict (first table wins for each key) answers
        # "user@domain in any table, then @domain in any table" with one lookup per key.
        self._merged: dict[str, str] | None = None
        self._has_catchall = True
        if not self.uses_subprocess:
            merged: dict[str, str] = {}
            for table in self._tables:
                assert isinstance(table, DictTable)
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
