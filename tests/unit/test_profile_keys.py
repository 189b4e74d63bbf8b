"""The identity key (``pk``) that EventsTable, IdentitiesTable and ProfilesTable share."""

from __future__ import annotations

import pytest

from shared.profiles_table import profile_pk, profile_pk_prefix, split_profile_pk


def test_the_key_joins_environment_traffic_type_and_key_with_hashes() -> None:
    assert profile_pk("Production", "user", "u-1") == "Production#user#u-1"
    assert profile_pk("Production", "user", "a#b") == "Production#user#a#b"
    assert profile_pk("Production", "user", "u-1").startswith(profile_pk_prefix("Production", "user"))
    assert profile_pk_prefix("Production", "user") == "Production#user#"


def test_a_key_splits_back_into_its_parts() -> None:
    assert split_profile_pk(profile_pk("Production", "user", "a#b")) == ("Production", "user", "a#b")
    assert split_profile_pk(profile_pk("", "", "")) == ("", "", "")
    with pytest.raises(ValueError, match="not an identity key"):
        split_profile_pk("ack#0123")
