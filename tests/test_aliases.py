"""Alias expansion as Postfix's virtual_alias_maps does it, and postmap(1)'s source format.

The semantic tests run on the fixtures in ``tests/data/aliases`` (read natively, as
``texthash:``); the ``postfix``-marked tests build and query tables with Debian's real
``postmap`` and check that the native parser agrees with it key by key.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from policyd.errors import AliasLookupError, ConfigError
from policyd.rules.aliases import AliasMaps
from policyd.sources.tables import load_alias_maps, parse_source
from tests import needs
from tests.doubles import FakePostmap

DATA = Path(__file__).parent / "data" / "aliases"
VIRTUAL = str(DATA / "virtual")
SECOND = str(DATA / "virtual-second")
TRICKY = str(DATA / "tricky")


def write(tmp_path: Path, text: str, name: str = "virtual") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def maps_from(tmp_path: Path, text: str, **options: Any) -> AliasMaps:
    return load_alias_maps([write(tmp_path, text)], **options)


# --- semantics, table-driven ---------------------------------------------------------------

EXPANSIONS = [
    ("no entry at all", "nobody@contoso.com", ("nobody@contoso.com",)),
    ("simple forward", "alice@contoso.com", ("alice@fabrikam.com",)),
    ("case-insensitive key", "ALICE@CONTOSO.COM", ("alice@fabrikam.com",)),
    (
        "comma and space separated results",
        "team@contoso.com",
        ("bob@fabrikam.com", "carol@tailspintoys.com", "dave@contoso.com"),
    ),
    (
        "recursion through two levels",
        "list@contoso.com",
        ("bob@fabrikam.com", "carol@tailspintoys.com", "dave@contoso.com"),
    ),
    ("@domain catch-all", "anyone@catchall.example", ("postmaster@contoso.com",)),
    (
        "user@domain in the second table wins over @domain in the first",
        "known@catchall.example",
        ("known@fabrikam.com",),
    ),
    ("entry only in the second table", "second@contoso.com", ("second@fabrikam.com",)),
    ("@otherdomain keeps the user", "Joe.Smith@old.example", ("Joe.Smith@new.example",)),
    (
        "self-mapping is kept and not expanded again",
        "keep@contoso.com",
        ("keep@contoso.com", "copy@fabrikam.com"),
    ),
    (
        "self-mapping matches case-insensitively, results as written in the table",
        "KEEP@contoso.com",
        ("keep@contoso.com", "copy@fabrikam.com"),
    ),
    ("result without a domain stays as is", "local@contoso.com", ("localuser",)),
    (
        "continuation lines with a comment inside",
        "cont@contoso.com",
        ("one@fabrikam.com", "two@fabrikam.com", "three@fabrikam.com"),
    ),
    (
        "duplicates removed case-insensitively, first kept, order preserved",
        "dup@contoso.com",
        ("Bob@Fabrikam.com", "carol@tailspintoys.com", "dave@contoso.com"),
    ),
]


@pytest.mark.parametrize(
    ("address", "expected"),
    [case[1:] for case in EXPANSIONS],
    ids=[case[0] for case in EXPANSIONS],
)
def test_expand_fixture_tables(address: str, expected: tuple[str, ...]) -> None:
    """Each virtual(5) feature expands exactly as Postfix's cleanup_map1n would."""
    maps = load_alias_maps([VIRTUAL, "texthash:" + SECOND])
    assert maps.expand(address) == expected


def test_first_table_wins_for_the_same_key() -> None:
    """A key present in two tables takes the first table's value (the second says otherwise)."""
    assert load_alias_maps([SECOND]).expand("alice@contoso.com") == ("never-used@fabrikam.com",)
    assert load_alias_maps([VIRTUAL, SECOND]).expand("alice@contoso.com") == ("alice@fabrikam.com",)
    assert load_alias_maps([SECOND, VIRTUAL]).expand("alice@contoso.com") == (
        "never-used@fabrikam.com",
    )


def test_catchall_does_not_apply_without_the_domain_entry(tmp_path: Path) -> None:
    """A catch-all matches only its own domain, not a parent or a subdomain."""
    maps = maps_from(tmp_path, "@contoso.com  all@fabrikam.com\n")
    assert maps.expand("x@contoso.com") == ("all@fabrikam.com",)
    assert maps.expand("x@eu.contoso.com") == ("x@eu.contoso.com",)
    assert maps.expand("x@contoso.com.evil") == ("x@contoso.com.evil",)


def test_indirect_self_reference_is_a_loop(tmp_path: Path) -> None:
    """Only a DIRECT self-reference stops expansion: a -> b, b -> (a, c) loops until the limit."""
    text = "a@x.example  b@x.example\nb@x.example  a@x.example, c@x.example\n"
    with pytest.raises(AliasLookupError, match="nesting"):
        maps_from(tmp_path, text, recursion_limit=20).expand("a@x.example")


def test_address_that_expanded_into_itself_is_not_expanded_again(tmp_path: Path) -> None:
    """After a -> (a, b), b -> a yields a again, which stays final (been_here), deduplicated."""
    text = "a@x.example  a@x.example, b@x.example\nb@x.example  a@x.example\n"
    assert maps_from(tmp_path, text).expand("a@x.example") == ("a@x.example",)


def test_loop_hits_the_recursion_limit(tmp_path: Path) -> None:
    """a -> b, b -> a defers (AliasLookupError) with Postfix's wording, at any limit."""
    text = "a@x.example  b@x.example\nb@x.example  a@x.example\n"
    for limit in (3, 1000):
        maps = maps_from(tmp_path, text, recursion_limit=limit)
        with pytest.raises(AliasLookupError) as caught:
            maps.expand("a@x.example")
        assert str(caught.value).startswith(
            "unreasonable virtual_alias_maps map nesting for a@x.example"
        )


def test_recursion_limit_boundary(tmp_path: Path) -> None:
    """A chain of three forwards needs a limit of four: the limit counts lookups per address."""
    text = "a@x.example b@x.example\nb@x.example c@x.example\nc@x.example d@x.example\n"
    assert maps_from(tmp_path, text, recursion_limit=4).expand("a@x.example") == ("d@x.example",)
    with pytest.raises(AliasLookupError, match=r"map nesting for a@x\.example"):
        maps_from(tmp_path, text, recursion_limit=3).expand("a@x.example")


def test_expansion_limit(tmp_path: Path) -> None:
    """More final addresses than virtual_alias_expansion_limit defers, at the limit passes."""
    text = "big@x.example  1@y.example, 2@y.example, 3@y.example, 4@y.example\n"
    assert len(maps_from(tmp_path, text, expansion_limit=4).expand("big@x.example")) == 4
    with pytest.raises(AliasLookupError) as caught:
        maps_from(tmp_path, text, expansion_limit=3).expand("big@x.example")
    assert str(caught.value).startswith(
        "unreasonable virtual_alias_maps map expansion size for big@x.example"
    )


def test_expansion_limit_default_is_postfix_default(tmp_path: Path) -> None:
    """1001 results exceed Postfix's default of 1000; 1000 results do not."""
    many = ", ".join(f"u{i}@y.example" for i in range(1000))
    maps = maps_from(tmp_path, f"ok@x.example {many}\nbad@x.example {many}, u1000@y.example\n")
    assert len(maps.expand("ok@x.example")) == 1000
    with pytest.raises(AliasLookupError, match="expansion size"):
        maps.expand("bad@x.example")


def test_address_length_limit(tmp_path: Path) -> None:
    """A result longer than virtual_alias_address_length_limit defers the mail."""
    text = f"long@x.example  {'a' * 40}@y.example\n"
    assert maps_from(tmp_path, text, address_length_limit=50).expand("long@x.example")
    with pytest.raises(AliasLookupError, match="unreasonable virtual_alias_maps result"):
        maps_from(tmp_path, text, address_length_limit=30).expand("long@x.example")


def test_non_address_result_is_an_error(tmp_path: Path) -> None:
    """A value with no address in it (only commas) is a lookup problem, as in mail_addr_map."""
    maps = maps_from(tmp_path, "odd@x.example  ,,,\n")
    with pytest.raises(AliasLookupError, match="non-address result"):
        maps.expand("odd@x.example")


def test_non_ascii_keys_fold_like_postfix(tmp_path: Path) -> None:
    """Keys fold with full Unicode case folding (smtputf8_enable=yes): Ä/ä and ß/ss match."""
    maps = maps_from(tmp_path, "ÄRGER@x.example a@y.example\nStraße@x.example b@y.example\n")
    assert maps.expand("ärger@X.example") == ("a@y.example",)
    assert maps.expand("STRASSE@x.example") == ("b@y.example",)


def test_miss_takes_the_fast_path_and_returns_the_caller_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address with no entry never reaches the general algorithm and comes back unchanged."""
    maps = maps_from(tmp_path, "a@x.example b@x.example\n@catch.example c@x.example\n")

    def boom(address: str) -> tuple[str, ...]:
        raise AssertionError(f"slow path for {address}")

    monkeypatch.setattr(maps, "_expand", boom)
    address = "Nobody@X.example"
    result = maps.expand(address)
    assert result == (address,)
    assert result[0] is address
    with pytest.raises(AssertionError, match="slow path"):
        maps.expand("who@catch.example")


def test_no_tables() -> None:
    """Without alias_maps every address is final, nothing is watched, nothing is spawned."""
    maps = load_alias_maps([])
    assert maps.expand("a@b.example") == ("a@b.example",)
    assert (maps.specs, maps.watched_files, maps.uses_subprocess) == ((), (), False)


# --- address extensions (recipient_delimiter) ----------------------------------------------

EXTENSIONS = [
    ("extension propagated", "+", "bob+news@contoso.com", ("bob+news@fabrikam.com",)),
    ("no delimiter configured", "", "bob+news@contoso.com", ("bob+news@contoso.com",)),
    ("exact key wins over stripping", "+", "bob+exact@contoso.com", ("exact@fabrikam.com",)),
    ("several delimiter characters", "+-", "bob-list@contoso.com", ("bob-list@fabrikam.com",)),
    (
        "mailer-daemon is never split with '-'",
        "-",
        "mailer-daemon@contoso.com",
        ("mailer-daemon@contoso.com",),
    ),
    ("owner- is never split with '-'", "-", "owner-bob@contoso.com", ("owner-bob@contoso.com",)),
    ("null localpart is not split", "+", "+bob@contoso.com", ("+bob@contoso.com",)),
    ("@otherdomain keeps the extension", "+", "joe+x@old.example", ("joe+x@new.example",)),
]


@pytest.mark.parametrize(
    ("delimiter", "address", "expected"),
    [case[1:] for case in EXTENSIONS],
    ids=[case[0] for case in EXTENSIONS],
)
def test_recipient_delimiter(
    tmp_path: Path, delimiter: str, address: str, expected: tuple[str, ...]
) -> None:
    """With recipient_delimiter, user+ext@domain falls back to user@domain and keeps +ext."""
    text = (
        "bob@contoso.com  bob@fabrikam.com\n"
        "bob+exact@contoso.com  exact@fabrikam.com\n"
        "mailer@contoso.com  mailer@fabrikam.com\n"
        "owner@contoso.com  owner@fabrikam.com\n"
        "@old.example  @new.example\n"
    )
    maps = maps_from(tmp_path, text, recipient_delimiter=delimiter)
    assert maps.expand(address) == expected


# --- postmap(1) source format --------------------------------------------------------------

SOURCES = [
    ("whitespace separated", "a@x  b@y\n", {"a@x": "b@y"}),
    ("tab separated, trailing blanks trimmed", "a@x\t\tb@y \t \n", {"a@x": "b@y"}),
    ("comment and blank lines", "# c\n\n   \n  # indented\na@x b@y\n", {"a@x": "b@y"}),
    ("key folded, value keeps case", "A@X.Example B@Y.Example\n", {"a@x.example": "B@Y.Example"}),
    ("colon stays in the key", "a@x: b@y\n", {"a@x:": "b@y"}),
    (
        "continuation keeps its leading whitespace",
        "a@x b@y,\n  c@y\n\td@y\n",
        {"a@x": "b@y,  c@y\td@y"},
    ),
    ("blank line does not end an entry", "a@x b@y\n\n c@y\n", {"a@x": "b@y c@y"}),
    ("quoted key with a space", '"a b"@x c@y\n', {'"a b"@x': "c@y"}),
    ("backslash escapes a space", "a\\ b@x c@y\n", {"a\\ b@x": "c@y"}),
    ("hash inside a value is text", "a@x b@y # no\n", {"a@x": "b@y # no"}),
    ("first duplicate wins", "a@x first\nA@X second\n", {"a@x": "first"}),
    ("CRLF line ends", "a@x b@y\r\nc@x d@y\r\n", {"a@x": "b@y", "c@x": "d@y"}),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in SOURCES], ids=[case[0] for case in SOURCES]
)
def test_parse_source(text: str, expected: Mapping[str, str]) -> None:
    """The native parser reads postmap(1) input format as Postfix 3.7 does."""
    entries, _ = parse_source(text, "/etc/postfix/virtual")
    assert entries == expected


def test_parse_source_warns_like_postmap() -> None:
    """Duplicate keys and "key: value" lines are kept as postmap keeps them, with a warning."""
    _, warnings = parse_source("a@x: b@y\nc@x d@y\nC@X e@y\n", "/v")
    assert len(warnings) == 2
    assert warnings[0].startswith('/v, line 1: record is in "key: value" format')
    assert warnings[1].startswith('/v, line 3: duplicate entry: "c@x"')


BAD_SOURCES = [
    ("key without a value", "a@x b@y\nnokey\n", "line 2", "has no value"),
    ("key with only blanks after it", "a@x b@y\n\nlonely@x   \n", "line 3", "has no value"),
    ("unbalanced quote", 'a@x b@y\n"open@x c@y\n', "line 2", "unbalanced"),
    ("continuation before any entry", "  a@x b@y\n", "line 1", "starts with whitespace"),
]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [case[1:] for case in BAD_SOURCES],
    ids=[case[0] for case in BAD_SOURCES],
)
def test_bad_source_lines_are_config_errors(
    tmp_path: Path, text: str, line: str, problem: str
) -> None:
    """A malformed line refuses the file with a ConfigError naming the file and line number."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_alias_maps(["texthash:" + path])
    assert caught.value.file == path
    assert caught.value.key == line
    assert problem in caught.value.problem


def test_invalid_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A source file that is not UTF-8 is refused with the line of the bad byte."""
    path = tmp_path / "virtual"
    path.write_bytes(b"a@x b@y\nc@x \xff@y\n")
    with pytest.raises(ConfigError, match="line 2: not UTF-8"):
        load_alias_maps([str(path)])


BAD_SPECS = [
    ("empty", "", "empty table"),
    ("relative path", "virtual", "not a Postfix table"),
    ("upper-case type", "HASH:/etc/postfix/virtual", "not a Postfix table"),
    ("texthash without a name", "texthash:", "no file name"),
    ("missing texthash file", "texthash:/nonexistent/virtual", "does not exist"),
    ("missing bare file", "/nonexistent/virtual", "does not exist"),
    ("missing hash database", "hash:/nonexistent/virtual", "postmap hash:/nonexistent/virtual"),
    ("missing regexp file", "regexp:/nonexistent/virtual.re", "does not exist"),
    ("proxy without an inner table", "proxy:nothing", "proxy:type:name"),
]


@pytest.mark.parametrize(
    ("spec", "problem"), [case[1:] for case in BAD_SPECS], ids=[case[0] for case in BAD_SPECS]
)
def test_bad_specs_are_config_errors(spec: str, problem: str) -> None:
    """An unusable alias_maps entry is a ConfigError naming the entry, the key and the fix."""
    with pytest.raises(ConfigError) as caught:
        load_alias_maps([spec], runner=FakePostmap({}))
    assert caught.value.key == "onprem.alias_maps"
    assert problem in caught.value.problem
    if spec:
        assert caught.value.file == spec


def test_watched_files_and_specs(tmp_path: Path) -> None:
    """Source files and the indexed database postmap reads are watched for reloads."""
    source = write(tmp_path, "a@x b@y\n")
    (tmp_path / "indexed").write_text("")
    (tmp_path / "indexed.db").write_text("")
    specs = ["texthash:" + source, f"proxy:hash:{tmp_path}/indexed"]
    maps = load_alias_maps(specs, runner=FakePostmap({}))
    assert maps.specs == tuple(specs)
    assert maps.watched_files == (source, f"{tmp_path}/indexed.db")
    assert maps.uses_subprocess


# --- tables queried through postmap -q (fake runner) ---------------------------------------


def test_postmap_table_cache_counts_calls() -> None:
    """Found and not-found answers are cached (case-folded), so postmap runs once per key."""
    fake = FakePostmap({"a@x.example": "b@y.example"})
    maps = load_alias_maps(["ldap:aliases"], runner=fake)
    assert maps.expand("a@x.example") == ("b@y.example",)
    assert maps.expand("A@X.example") == ("b@y.example",)
    # a@x -> b@y; then b@y (not found: full key, then @y.example)
    assert fake.lookups == ["a@x.example", "b@y.example", "@y.example"]
    assert maps.expand("nobody@x.example") == ("nobody@x.example",)
    assert maps.expand("nobody@x.example") == ("nobody@x.example",)
    assert fake.lookups.count("nobody@x.example") == 1
    assert fake.lookups.count("@x.example") == 1


def test_postmap_cache_is_bounded() -> None:
    """With cache_size=2 the least recently used key is forgotten and asked again."""
    fake = FakePostmap({})
    maps = load_alias_maps(["ldap:aliases"], runner=fake, cache_size=2)
    table = maps._tables[0]
    for key in ("1@x", "2@x", "1@x", "3@x", "1@x", "2@x"):
        table.lookup(key)
    assert fake.lookups == ["1@x", "2@x", "3@x", "2@x"]


def test_postmap_timeout_is_a_lookup_error() -> None:
    """A postmap that does not answer in time raises AliasLookupError naming the table."""

    def slow(key: str) -> subprocess.CompletedProcess[str] | None:
        raise subprocess.TimeoutExpired(["postmap"], 0.5)

    maps = load_alias_maps(["ldap:aliases"], runner=FakePostmap({}, fail=slow), timeout=0.5)
    with pytest.raises(
        AliasLookupError, match=r"^ldap:aliases: lookup of a@x timed out after 0.5 s"
    ):
        maps.expand("a@x")


def test_failing_table_at_lookup_is_a_lookup_error() -> None:
    """postmap's fatal exit (status 1 with "fatal:") is a failure, not a "not found"."""

    def broken(key: str) -> subprocess.CompletedProcess[str] | None:
        if "probe" in key:
            return None
        stderr = "postmap: fatal: dict_ldap_lookup: Search error -1: Can't contact LDAP server\n"
        return subprocess.CompletedProcess(["postmap"], 1, "", stderr)

    maps = load_alias_maps(["proxy:ldap:aliases"], runner=FakePostmap({}, fail=broken))
    with pytest.raises(AliasLookupError) as caught:
        maps.expand("a@x")
    assert str(caught.value).startswith("proxy:ldap:aliases: lookup of a@x failed:")
    assert "Can't contact LDAP server" in str(caught.value)


def test_other_exit_status_is_a_lookup_error() -> None:
    """Any exit status other than 0 and 1 is a failure even without a message."""

    def odd(key: str) -> subprocess.CompletedProcess[str] | None:
        return None if "probe" in key else subprocess.CompletedProcess(["postmap"], 75, "", "")

    maps = load_alias_maps(["mysql:aliases"], runner=FakePostmap({}, fail=odd))
    with pytest.raises(AliasLookupError, match="exit status 75"):
        maps.expand("a@x")


def test_failing_table_at_load_is_a_config_error() -> None:
    """A table postmap cannot open at load time is a ConfigError with postmap's message."""

    def unsupported(key: str) -> subprocess.CompletedProcess[str] | None:
        return subprocess.CompletedProcess(
            ["postmap"], 1, "", "postmap: fatal: unsupported dictionary type: lmdb\n"
        )

    with pytest.raises(ConfigError, match="unsupported dictionary type: lmdb"):
        load_alias_maps(["ldap:aliases"], runner=FakePostmap({}, fail=unsupported))


def test_missing_postmap_program_is_a_config_error() -> None:
    """Without the postmap program a non-texthash table cannot be used: ConfigError."""
    with pytest.raises(ConfigError, match="install postfix"):
        load_alias_maps(["ldap:aliases"], postmap="/nonexistent/postmap")


def test_mixed_tables_keep_postfix_key_order(tmp_path: Path) -> None:
    """user@domain in a later postmap table beats @domain in an earlier source file."""
    source = write(tmp_path, "@x.example  catchall@y.example\n")
    fake = FakePostmap({"known@x.example": "known@y.example"})
    maps = load_alias_maps([source, "ldap:aliases"], runner=fake)
    assert maps.expand("known@x.example") == ("known@y.example",)
    assert maps.expand("other@x.example") == ("catchall@y.example",)


def test_pattern_tables_never_see_partial_keys() -> None:
    """regexp:/pcre: tables get only full addresses, never @domain or the stripped user@domain."""
    fake = FakePostmap({})
    maps = load_alias_maps(["pcre:/dev/null"], runner=fake, recipient_delimiter="+")
    assert maps.expand("Bob+x@X.example") == ("Bob+x@X.example",)
    assert fake.lookups == ["Bob+x@X.example"]


# --- the real postmap ----------------------------------------------------------------------


@pytest.fixture
def postmap() -> str:
    """Path of Debian's postmap; skip without it, but fail when the ``CI`` variable is set."""
    return needs.program("postmap", "postfix")


def real_query(postmap: str, key: str, table: str) -> str | None:
    done = subprocess.run(
        [postmap, "-q", key, table], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode == 0:
        return done.stdout.rstrip("\n")
    assert done.returncode == 1, done.stderr
    assert "fatal" not in done.stderr, done.stderr
    return None


@pytest.mark.postfix
def test_hash_table_with_real_postmap(tmp_path: Path, postmap: str) -> None:
    """A hash: table built by postmap expands through postmap -q, including misses."""
    source = write(
        tmp_path,
        "alice@contoso.com  alice@fabrikam.com, team@contoso.com\n"
        "team@contoso.com   bob@fabrikam.com\n"
        "@old.example       @new.example\n",
    )
    subprocess.run([postmap, f"hash:{source}"], check=True, cwd=tmp_path, timeout=10)
    maps = load_alias_maps([f"hash:{source}"], postmap=postmap)
    assert maps.uses_subprocess
    assert maps.watched_files == (source + ".db",)
    assert maps.expand("Alice@Contoso.com") == ("alice@fabrikam.com", "bob@fabrikam.com")
    assert maps.expand("joe@old.example") == ("joe@new.example",)
    assert maps.expand("nobody@contoso.com") == ("nobody@contoso.com",)


@pytest.mark.postfix
def test_regexp_table_with_real_postmap(tmp_path: Path, postmap: str) -> None:
    """A regexp: table sees the address unfolded (so $1 keeps case) and never @domain keys."""
    pattern = write(
        tmp_path, "/^(.*)@old\\.example$/  ${1}@new.example\n/^@catch\\.example$/ x@y\n", "re"
    )
    maps = load_alias_maps([f"regexp:{pattern}"], postmap=postmap)
    assert maps.expand("Joe@old.example") == ("Joe@new.example",)
    assert maps.expand("joe@catch.example") == ("joe@catch.example",)


@pytest.mark.postfix
def test_real_postmap_errors(tmp_path: Path, postmap: str) -> None:
    """Real postmap failures (unknown table type, unreadable database) are ConfigErrors at load."""
    with pytest.raises(ConfigError, match="unsupported dictionary type"):
        load_alias_maps(["nosuchtype:whatever"], postmap=postmap)
    bogus = write(tmp_path, "a@x b@y\n")
    Path(bogus + ".db").write_bytes(b"this is not a Berkeley DB file" * 100)
    with pytest.raises(ConfigError) as caught:
        load_alias_maps([f"hash:{bogus}"], postmap=postmap)
    # Berkeley DB prints its own lines first; the message keeps postmap's fatal line.
    assert "postmap cannot use this table" in caught.value.problem
    assert "fatal: open database" in caught.value.problem


@pytest.mark.postfix
def test_native_parser_agrees_with_postmap_texthash(postmap: str) -> None:
    """For every key of the tricky fixture, in two cases, native lookup equals postmap -q."""
    entries, _ = parse_source(Path(TRICKY).read_text(encoding="utf-8"), TRICKY)
    assert len(entries) >= 15
    native = load_alias_maps([TRICKY])._tables[0]
    keys = set(entries)
    keys |= {key.upper() for key in entries if key.isascii()}
    keys |= {'"quoted key"@example.com', "nothere@example.com", "colon@example.com"}
    for key in sorted(keys):
        assert native.lookup(key) == real_query(postmap, key, f"texthash:{TRICKY}"), key


def test_the_circuit_breaker_closes_again_after_its_pause() -> None:
    """Issue 16, own instance: a table whose postmap timed out twice in a row is not asked for
    BREAKER_SECONDS, then asked again; one good answer resets the count."""
    import subprocess

    from policyd.errors import AliasLookupError
    from policyd.sources import tables

    now = [0.0]
    calls: list[str] = []
    answers = ["timeout", "timeout", "ok", "timeout"]

    def runner(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv[-2])
        if answers.pop(0) == "timeout":
            raise subprocess.TimeoutExpired(argv, 3)
        return subprocess.CompletedProcess(argv, 0, "found\n", "")

    table = tables._PostmapTable(
        "ldap:/x.cf",
        "ldap",
        postmap="postmap",
        timeout=3,
        cache_size=0,
        runner=runner,
        clock=lambda: now[0],
    )
    for key in ("a", "b"):
        with pytest.raises(AliasLookupError, match="timed out"):
            table.query(key)
    with pytest.raises(AliasLookupError, match="not asked"):
        table.query("c")
    assert calls == ["a", "b"]
    now[0] = tables.BREAKER_SECONDS + 1
    assert table.query("d") == (True, "found")
    with pytest.raises(AliasLookupError, match="timed out"):
        table.query("e")  # one timeout after a success: still closed
    assert calls == ["a", "b", "d", "e"]
