"""The configuration schema (policyd.sources.schema) and everything that must agree with it.

The README's configuration table and ``contrib/m365-policyd.example.toml`` are written by hand;
these tests compare them with the schema (keys, defaults, meanings), so that none can drift.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from policyd.constants import ACTIONS
from policyd.errors import ConfigError
from policyd.rules.reasons import REFUSE_REASONS
from policyd.sources import schema
from policyd.sources.config import read_config_file
from policyd.sources.schema import Key

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "contrib" / "m365-policyd.example.toml"

KEYS = schema.KEYS
#: Tables of inline tables inside an array value (not written as [[...]] in a file).
INLINE_ENTRIES = "tenant.accepted_domains[]"


def toml_value(value: object) -> str:
    """A default as TOML writes it (as the README shows it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict) and not value:
        return "{}"
    raise AssertionError(f"no TOML form for {value!r}")


def plain(markdown: str) -> str:
    """A meaning as a TOML comment writes it: no code spans."""
    return markdown.replace("`", "")


def example_value(key: Key[Any]) -> object:
    """The value of ``key.example`` when it is TOML (``name = value``), else a sentinel."""
    try:
        parsed = tomllib.loads(key.example)
    except tomllib.TOMLDecodeError:
        return NotImplemented
    assert list(parsed) == [key.name], key.example
    return key.kind.read(parsed[key.name])


# --- the schema itself ---------------------------------------------------------------------------


def test_each_key_is_declared_once() -> None:
    """No two declarations share a table and name, and every table's keys are listed by it."""
    paths = [key.path for key in KEYS]
    assert len(paths) == len(set(paths))
    assert schema.SECTIONS == (
        "server",
        "tenant",
        "onprem",
        "policy",
        "log",
        "outcomes",
        "postfix",
        "assumptions",
        "submission",
        "tenants",
    )
    for table in {key.table for key in KEYS}:
        assert list(schema.keys_of(table)) == [k.name for k in KEYS if k.table == table]


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key.path)
def test_default_passes_its_own_check(key: Key[Any]) -> None:
    """An optional key's default has the key's type and passes its check unchanged; a required
    key's check refuses the default, so leaving the key out is an error."""
    if key.check is None:
        assert not key.required
        return
    if key.required:
        with pytest.raises(ValueError, match="is missing"):
            key.check(key.default, key)
    else:
        assert key.check(key.default, key) == key.default


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key.path)
def test_example_in_messages_is_valid(key: Key[Any]) -> None:
    """The "write for example" text of each key is itself a valid setting of that key."""
    value = example_value(key)
    if value is NotImplemented:  # a table or an array of tables: described in words
        assert key.kind in (schema.TABLE, schema.TABLES), key.example
        assert key.example.startswith("[")
        return
    assert value is not None, f"{key.example} is not {key.kind.expected}"
    if key.check is not None:
        key.check(value, key)


@pytest.mark.parametrize("key", [k for k in KEYS if k.choices], ids=lambda key: key.path)
def test_meaning_names_every_choice(key: Key[Any]) -> None:
    """A key with a fixed set of values names each of them in its meaning."""
    for choice in key.choices:
        assert f"`{choice}`" in key.meaning


# --- validation is driven by the schema -----------------------------------------------------------


def _file_for(key: Key[Any], text: str) -> tuple[str, str]:
    """A configuration setting ``key`` to TOML ``text``, and the key its error names."""
    if key.table == "tenant.inbound_connector[]":
        other = "" if key.name == "name" else 'name = "a"\n'
        return f"[[tenant.inbound_connector]]\n{other}{key.name} = {text}\n", (
            f"tenant.inbound_connector[1].{key.name}"
        )
    if key.table == INLINE_ENTRIES:
        other = "" if key.name == "domain" else 'domain = "contoso.com", '
        return f"[tenant]\naccepted_domains = [{{ {other}{key.name} = {text} }}]\n", (
            f"tenant.accepted_domains.{key.name}"
        )
    if key.table == "":
        return f"{key.name} = {text}\n", key.name
    if key.table == "tenants.NAME":
        return f"[tenants.fabrikam]\n{key.name} = {text}\n", f"tenants.fabrikam.{key.name}"
    return f"[{key.table}]\n{key.name} = {text}\n", key.path


@pytest.mark.parametrize("key", KEYS, ids=lambda key: key.path)
def test_a_value_of_the_wrong_type_names_the_key_and_its_example(
    tmp_path: Path, key: Key[Any]
) -> None:
    """For every key, a value of another TOML type is refused with the schema's expected type
    and example, under the key's own name."""
    wrong = "1" if key.kind is schema.STRING else '"x"'
    text, name = _file_for(key, wrong)
    path = tmp_path / "m365-policyd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_config_file(str(path))
    got = "an integer (1)" if wrong == "1" else 'a string ("x")'
    assert (caught.value.key, caught.value.problem) == (
        name,
        f"expected {key.kind.expected}, got {got}; write for example {key.example}",
    )


@pytest.mark.parametrize("table", sorted({key.table for key in KEYS} - {""}))
def test_unknown_keys_are_refused_with_the_schema_list(tmp_path: Path, table: str) -> None:
    """Each table refuses a key the schema does not declare, listing the declared ones (a
    [tenants.NAME] table takes every [tenant] key too; unknown top-level names are sections)."""
    key = schema.TENANTS_KEYS if table == "tenants.NAME" else schema.keys_of(table)
    fake = schema.Key(table, "no_such_key", schema.STRING, "", "", "")
    text, name = _file_for(fake, '"x"')
    path = tmp_path / "m365-policyd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        read_config_file(str(path))
    assert caught.value.key == name
    assert caught.value.problem.endswith(": " + ", ".join(sorted(key)))


# --- the README's configuration table -----------------------------------------------------------


def _readme_rows() -> list[tuple[str, str, str]]:
    text = README.read_text("utf-8")
    section = text[text.index("\n## Configuration reference\n") :]
    section = section[: section.index("\n## ", 1)]
    rows: list[tuple[str, str, str]] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 3, line
        rows.append((cells[0], cells[1], cells[2].replace("\\|", "|")))
    return rows


def test_readme_table_is_the_schema() -> None:
    """The README lists every key in schema order, with the schema's default and meaning."""
    expected = [
        (
            f"`{key.path}`",
            "—" if key.required else f"`{toml_value(key.default)}`",
            key.meaning,
        )
        for key in KEYS
    ]
    assert _readme_rows() == expected


# --- the example configuration -------------------------------------------------------------------


def _path(table: str, name: str) -> str:
    """A key's path as the schema writes it (a top-level key is its name alone)."""
    return f"{table}.{name}" if table else name


def _example_lines() -> list[tuple[str, str, object, str, bool]]:
    """(table, key, value, comment, commented out) for each key line of the example file.

    A ``[a.b]`` or ``[[a.b]]`` header also counts as key ``b`` of table ``a``.
    """
    lines: list[tuple[str, str, object, str, bool]] = []
    table = ""
    for raw in EXAMPLE.read_text("utf-8").splitlines():
        header = re.match(r"^(?:# )?(\[\[?)([A-Za-z_.]+)\]\]?(?:\s+#\s(.*))?$", raw)
        if header and header.group(2).startswith("tenants."):
            table = "tenants.NAME"  # the commented-out example of several tenants
            continue
        if header:
            array, name, comment = header.groups()
            parent, _, last = name.rpartition(".")
            if parent:
                lines.append((parent, last, None, comment or "", False))
            table = name + "[]" if array == "[[" else name
            continue
        commented = raw.startswith("# ") and "=" in raw.split("#")[1]
        body = raw[2:] if commented else raw
        if not body or body.startswith("#"):
            continue
        for match in re.finditer(r"\s+#\s", body):  # the first "  # " that ends a TOML value
            try:
                ((name, value),) = tomllib.loads(body[: match.start()]).items()
            except tomllib.TOMLDecodeError:
                continue
            lines.append((table, name, value, body[match.end() :], commented))
            break
        else:
            ((name, value),) = tomllib.loads(body).items()
            lines.append((table, name, value, "", commented))
    return lines


def test_example_file_has_every_key_once_with_its_meaning() -> None:
    """Each key appears once in the example (some commented out), commented with its meaning;
    keys of inline tables are shown in their parent's comment."""
    lines = [line for line in _example_lines() if line[0] != "policy.by_reason"]
    seen = [_path(table, name) for table, name, *_ in lines]
    assert len(seen) == len(set(seen)), seen
    assert set(seen) == {key.path for key in KEYS if key.table != INLINE_ENTRIES}
    comments = {_path(table, name): comment for table, name, _, comment, _ in lines}
    for key in KEYS:
        if key.table == INLINE_ENTRIES:
            assert f"{key.name} = " in comments["tenant.accepted_domains"], key.path
        else:
            assert comments[key.path] == plain(key.meaning), key.path


#: What the example file sets for its demonstration tenant: the schema's example values.
DEMONSTRATION = {
    "tenant.accepted_domains",
    "tenant.inbound_connector[].sender_ip_addresses",
    "onprem.egress_addresses",
}


def test_example_file_values_are_the_defaults() -> None:
    """Every value the example writes is the key's default, except the demonstration tenant
    (the schema's example values), a required key's value, and commented-out examples."""
    keys = {key.path: key for key in KEYS}
    for table, name, value, _, commented in _example_lines():
        if table == "policy.by_reason" or value is None:
            continue
        key = keys[_path(table, name)]
        read = key.kind.read(value)
        assert read is not None, key.path
        if key.required:
            continue
        if commented or key.path in DEMONSTRATION:
            assert read == example_value(key) != key.default, key.path
        else:
            assert read == key.default, key.path


def test_example_by_reason_lines_are_refusing_reasons() -> None:
    """The commented per-reason overrides in the example name refusing reasons and actions."""
    overrides = [line for line in _example_lines() if line[0] == "policy.by_reason"]
    assert overrides
    for _, reason, action, _, commented in overrides:
        assert commented and reason in REFUSE_REASONS and action in ACTIONS
