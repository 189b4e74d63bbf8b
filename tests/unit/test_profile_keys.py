"""The identity key (``pk``) that EventsTable, IdentitiesTable and ProfilesTable share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.profiles_table import LastTreatment, profile_pk, profile_pk_prefix, split_profile_pk

names = st.text(alphabet=st.sampled_from("ab#%/2F35"), max_size=6) | st.text(max_size=6)


def test_the_key_joins_environment_traffic_type_and_key_with_hashes() -> None:
    assert profile_pk("Production", "user", "u-1") == "Production#user#u-1"
    assert profile_pk("Production", "user", "a#b") == "Production#user#a#b"
    assert profile_pk("Prod%23", "user", "a/b%2F") == "Prod%23#user#a/b%2F"
    assert profile_pk("Production", "user", "u-1").startswith(profile_pk_prefix("Production", "user"))
    assert profile_pk_prefix("Production", "user") == "Production#user#"


def test_names_with_hashes_that_joined_into_one_key_get_their_own() -> None:
    """'a#b' + 'c' and 'a' + 'b#c' both made 'a#b#c#k', and split back as 'a' + 'b'."""
    first, second = profile_pk("a#b", "c", "k"), profile_pk("a", "b#c", "k")
    assert first != second
    assert (first, second) == ("a%23b/c/k", "a/b%23c/k")
    assert split_profile_pk(first) == ("a#b", "c", "k")
    assert split_profile_pk(second) == ("a", "b#c", "k")
    assert split_profile_pk(profile_pk("a#b", "c", "k/%#")) == ("a#b", "c", "k/%#")


@given(names, names, names)
def test_every_key_splits_back_into_its_parts_and_names_without_hashes_keep_theirs(
    environment: str, traffic_type: str, key: str
) -> None:
    pk = profile_pk(environment, traffic_type, key)
    assert split_profile_pk(pk) == (environment, traffic_type, key)
    if "#" not in environment + traffic_type:
        assert pk == f"{environment}#{traffic_type}#{key}"


@pytest.mark.parametrize("pk", ["ack#0123", "a/b", "a/b/c", "a%23b/c/d/e", "a%23b/c/%2f", "a%2Fb%23/c/k%"])
def test_what_no_identity_has_as_key_does_not_split(pk: str) -> None:
    with pytest.raises(ValueError, match="not an identity key"):
        split_profile_pk(pk)


def test_there_is_no_key_prefix_for_names_with_hashes() -> None:
    with pytest.raises(ValueError, match="'#'"):
        profile_pk_prefix("a#b", "user")


def last_treatment(key: str = "u-1", split: str = "f") -> LastTreatment:
    return LastTreatment("Production", "user", key, split, "on", 1_000)


def test_a_key_is_storable_up_to_dynamodbs_2048_bytes_of_utf8() -> None:
    """The prefix "Production#user#" is 16 bytes, and 1,016 "é" make 2,048 (in 1,032 characters)."""
    assert len(last_treatment("é" * 1016).pk.encode()) == 2048
    assert last_treatment("é" * 1016).storable
    assert not last_treatment("é" * 1016 + "a").storable


def test_a_flag_is_storable_up_to_dynamodbs_1024_bytes_of_utf8_in_the_sort_key() -> None:
    """The prefix "treatment#" is 10 bytes: 507 "é" make a sort key of 1,024 (in 517 characters)."""
    assert len(last_treatment(split="é" * 507).sk.encode()) == 1024
    assert last_treatment(split="é" * 507).storable
    assert not last_treatment(split="é" * 507 + "a").storable
