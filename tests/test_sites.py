"""Site-name validation: strict lowercase DNS names, each refusal naming its rule."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jerp_jobs.errors import InvalidSiteName
from jerp_jobs.sites import RESERVED, db_name_for, is_valid_site_name, validate_site_name

METACHARACTERS = set(";|&$`'\"\\<>(){}[]*?!~#%^=+, \t\n\r/:@") | {"\x00", ".."}

label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z", fullmatch=True)
dns_names = (
    st.lists(label, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda n: len(n) <= 253 and n not in RESERVED)
)


@given(dns_names)
def test_every_valid_dns_name_is_accepted(name: str) -> None:
    assert validate_site_name(name) == name


@given(st.text(alphabet=string.printable + "é\x00ß", max_size=80))
def test_no_name_with_shell_or_path_metacharacters_is_accepted(name: str) -> None:
    if any(meta in name for meta in METACHARACTERS) or name.startswith(("-", ".")):
        assert not is_valid_site_name(name)


@given(dns_names, st.sampled_from(sorted(METACHARACTERS)), st.integers(min_value=0, max_value=300))
def test_inserting_a_metacharacter_anywhere_is_refused(name: str, meta: str, at: int) -> None:
    at = at % (len(name) + 1)
    assert not is_valid_site_name(name[:at] + meta + name[at:])


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "may not be empty"),
        ("Acme.com", "lowercase"),
        ("acme..com", "empty label"),
        (".acme.com", "empty label"),
        ("acme.com.", "empty label"),
        ("-acme.com", "start or end with '-'"),
        ("acme-.com", "start or end with '-'"),
        ("ac_me.com", "only letters a-z"),
        ("acme.com;rm -rf /", "only letters a-z"),
        ("../../etc/passwd", "empty label"),
        ("etc/passwd", "only letters a-z"),
        ("a" * 64 + ".com", "at most 63"),
        (".".join(["a" * 63] * 4), "at most 253"),
        ("all", "reserved"),
        ("assets", "reserved"),
        ("açme.com", "only letters a-z"),
    ],
)
def test_refusal_names_the_rule(name: str, rule: str) -> None:
    with pytest.raises(InvalidSiteName) as caught:
        validate_site_name(name)
    assert rule in str(caught.value)
    assert caught.value.rule and caught.value.name == name


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidSiteName, match="must be a string"):
        validate_site_name(None)


@given(dns_names)
def test_db_name_is_a_valid_mariadb_identifier(name: str) -> None:
    db = db_name_for(name)
    assert len(db) <= 64 and all(c.isalnum() or c == "_" for c in db)


def test_db_names_of_similar_sites_differ() -> None:
    assert db_name_for("a-b.example.com") != db_name_for("a.b.example.com")
