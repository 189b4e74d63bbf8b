"""Config documents (docs/inbound.md, outbound.md): defaults, required fields, errors that name the field."""

from __future__ import annotations

import json

import boto3
import pytest

from shared import config
from shared.config import ConfigInvalid, InboundConfig, OutboundConfig, parse_config
from tests.conftest import put_config, put_secret


def test_inbound_defaults_match_the_contract() -> None:
    cfg = parse_config(
        InboundConfig,
        {"environment": "Production", "identities": [{"segmentId": "userId", "trafficType": "user"}]},
        "x",
    )
    assert cfg.enableIdentify
    assert cfg.enableTrack
    assert cfg.trackNamedPages
    assert cfg.trackNamedScreens
    assert cfg.eventTypeIdField == "event"
    assert cfg.valueField is None
    assert cfg.pageEventTypeId == "view_{name}_page"
    assert cfg.screenEventTypeId == "view_{name}_screen"
    assert cfg.delivery.enabled is False
    assert cfg.delivery.eventsEndpoint.unicode_string() == "https://events.split.io/api"
    assert cfg.delivery.identitiesEndpoint.unicode_string() == "https://api.split.io/internal/api/v2"


MINIMAL_INBOUND = {"environment": "P", "identities": [{"segmentId": "userId", "trafficType": "user"}]}


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ({"identities": [{"segmentId": "userId", "trafficType": "user"}]}, "environment"),
        ({"environment": "Production", "identities": []}, "identities"),
        (
            {"environment": "P", "identities": [{"segmentId": "email", "trafficType": "user"}]},
            "identities.0.segmentId",
        ),
        ({**MINIMAL_INBOUND, "enableTrak": True}, "enableTrak"),
        ({**MINIMAL_INBOUND, "environment": "Prod#EU"}, "environment: Value error, must not contain '#'"),
        ({**MINIMAL_INBOUND, "valueField": "properties..revenue"}, "valueField"),
        (
            {**MINIMAL_INBOUND, "eventTypeIdField": "event "},
            "eventTypeIdField: Value error, a name in the path starts or ends with a space",
        ),
        (
            {**MINIMAL_INBOUND, "pageEventTypeId": "view_{Name}"},
            "pageEventTypeId: Value error, the only placeholder is {name}",
        ),
        (
            {**MINIMAL_INBOUND, "screenEventTypeId": "screen/{name}"},
            "screenEventTypeId: Value error, must make FME event type ids",
        ),
    ],
)
def test_invalid_inbound_config_names_the_field(document: dict, names: str) -> None:
    with pytest.raises(ConfigInvalid) as err:
        parse_config(InboundConfig, document, "/p/inbound/c1")
    assert names in str(err.value)
    assert "/p/inbound/c1" in str(err.value)


def test_field_paths_may_name_properties_with_spaces_and_templates_may_leave_out_the_name() -> None:
    cfg = parse_config(
        InboundConfig,
        {
            "environment": "Production",
            "identities": [{"segmentId": "userId", "trafficType": "user"}],
            "eventTypeIdField": "properties.Event Name",
            "valueField": "properties.Order Total",
            "pageEventTypeId": "page_view",  # every named page one event type; the name is a property
        },
        "x",
    )
    assert (cfg.eventTypeIdField, cfg.valueField) == ("properties.Event Name", "properties.Order Total")
    assert cfg.pageEventTypeId == "page_view"


def test_not_json_and_not_an_object_are_clear_errors() -> None:
    with pytest.raises(ConfigInvalid, match="not valid JSON"):
        parse_config(InboundConfig, "{nope", "src")
    with pytest.raises(ConfigInvalid, match="must be a JSON object"):
        parse_config(InboundConfig, "[1]", "src")


def test_outbound_default_traffic_type_must_be_mapped() -> None:
    doc = {"environments": ["Production"], "identities": {"user": "userId"}}
    cfg = parse_config(OutboundConfig, doc, "x")
    assert cfg.traffic_type_default == "user"
    assert cfg.endpoint_base == "https://api.segment.io/v1"
    assert cfg.eventName == "get_treatment"
    assert cfg.computedTraits.traitName == "{split}"
    assert cfg.gzip is False
    with pytest.raises(ConfigInvalid, match="gzip"):
        parse_config(OutboundConfig, {**doc, "gzip": "sometimes"}, "x")
    with pytest.raises(ConfigInvalid, match="defaultTrafficType"):
        parse_config(OutboundConfig, {**doc, "defaultTrafficType": "account"}, "x")


def test_outbound_environment_matching() -> None:
    cfg = parse_config(
        OutboundConfig, {"environments": ["Production", "env-id-1"], "identities": {"u": "userId"}}, "x"
    )
    assert cfg.matches_environment("Production", None)
    assert cfg.matches_environment(None, "env-id-1")
    assert not cfg.matches_environment("Staging", "env-id-2")
    star = parse_config(OutboundConfig, {"environments": ["*"], "identities": {"u": "userId"}}, "x")
    assert star.matches_environment("anything", None)


def test_loading_distinguishes_missing_invalid_and_cached(function_env) -> None:
    function_env("IngestFunction")
    with pytest.raises(config.ConfigNotFound):
        config.load_inbound("missing")
    put_config(
        "inbound/c1",
        {"environment": "Production", "identities": [{"segmentId": "userId", "trafficType": "user"}]},
    )
    assert config.load_inbound("c1").environment == "Production"
    # Cached: a change in SSM is not seen until the cache expires or is cleared.
    put_config(
        "inbound/c1",
        {"environment": "Staging", "identities": [{"segmentId": "userId", "trafficType": "user"}]},
    )
    assert config.load_inbound("c1").environment == "Production"
    config.clear_caches()
    assert config.load_inbound("c1").environment == "Staging"


def test_traffic_type_names_of_80_characters_are_taken() -> None:
    identities = [{"segmentId": "userId", "trafficType": "t" * 80}]
    assert parse_config(InboundConfig, {**MINIMAL_INBOUND, "identities": identities}, "x").identities


def test_configs_are_cached_for_config_cache_seconds(function_env, monkeypatch) -> None:
    function_env("IngestFunction")
    monkeypatch.setenv("CONFIG_CACHE_SECONDS", "0")  # nothing cached: every change is seen at once
    put_config("inbound/c1", MINIMAL_INBOUND)
    put_config("audiences/a1", {"environment": "P"})
    assert config.load_inbound("c1").environment == "P"
    assert set(config.list_parameters("audiences")) == {"a1"}
    put_config("inbound/c1", {**MINIMAL_INBOUND, "environment": "Staging"})
    put_config("audiences/a2", {"environment": "P"})
    assert config.load_inbound("c1").environment == "Staging"
    assert set(config.list_parameters("audiences")) == {"a1", "a2"}


def test_rotated_secret_keeps_the_previous_version_readable(function_env) -> None:
    function_env("IngestFunction")
    name = f"{config.config_prefix()}/inbound/c1"
    put_secret("inbound/c1", "first")
    with pytest.raises(config.ConfigNotFound):
        config.get_secret(name, previous=True)
    put_secret("inbound/c1", "second")
    assert config.get_secret(name) == "second"
    assert config.get_secret(name, previous=True) == "first"


def test_unavailable_ssm_is_not_reported_as_missing(function_env, monkeypatch) -> None:
    function_env("IngestFunction")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    boto3.setup_default_session()
    with pytest.raises(config.ConfigUnavailable):
        config.load_inbound("c1")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "/fme-segment-bridge/local"),
        ("", "/fme-segment-bridge/local"),
        ("/fme-segment-bridge/prod/", "/fme-segment-bridge/prod"),
        ("/team-a/bridge", "/team-a/bridge"),
        ("/", "/fme-segment-bridge/local"),
    ],
)
def test_config_prefix_from_the_environment(
    value: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("CONFIG_PREFIX", raising=False)
    else:
        monkeypatch.setenv("CONFIG_PREFIX", value)
    assert config.config_prefix() == expected


def test_secure_string_configs_are_read_decrypted(function_env) -> None:
    function_env("IngestFunction")
    ssm = boto3.client("ssm", region_name="us-east-1")
    documents = {
        "inbound/c1": MINIMAL_INBOUND,
        "outbound/o1": {"environments": ["P"], "identities": {"user": "userId"}},
        "audiences/a1": {"environment": "P"},
    }
    for name, document in documents.items():
        full = f"{config.config_prefix()}/{name}"
        ssm.put_parameter(Name=full, Value=json.dumps(document), Type="SecureString")
    assert config.load_inbound("c1").environment == "P"
    assert config.load_outbound("o1").environments == ["P"]
    assert json.loads(config.list_parameters("audiences")["a1"]) == {"environment": "P"}


@pytest.mark.parametrize(
    ("document", "names"),
    [
        (
            {**MINIMAL_INBOUND, "valueField": "properties. revenue"},
            "valueField: Value error, a name in the path starts or ends with a space",
        ),
        (
            {**MINIMAL_INBOUND, "pageEventTypeId": "view_{name}}"},
            "pageEventTypeId: Value error, the only placeholder is {name}",
        ),
        ({**MINIMAL_INBOUND, "identities": [{"segmentId": "userId", "trafficType": "us#er"}]}, "trafficType"),
        (
            {**MINIMAL_INBOUND, "identities": [{"segmentId": "userId", "trafficType": "my user"}]},
            "trafficType",
        ),
        ({**MINIMAL_INBOUND, "identities": [{"segmentId": "userId", "trafficType": "-user"}]}, "trafficType"),
        (
            {**MINIMAL_INBOUND, "identities": [{"segmentId": "userId", "trafficType": "t" * 81}]},
            "trafficType",
        ),
    ],
)
def test_each_part_of_a_path_and_each_traffic_type_is_checked(document: dict, names: str) -> None:
    with pytest.raises(ConfigInvalid) as err:
        parse_config(InboundConfig, document, "x")
    assert names in str(err.value)


def test_outbound_needs_an_environment_and_names_its_default_traffic_type() -> None:
    with pytest.raises(ConfigInvalid, match="environments"):
        parse_config(OutboundConfig, {"environments": [], "identities": {"user": "userId"}}, "x")
    with pytest.raises(ConfigInvalid, match="identities"):
        parse_config(OutboundConfig, {"environments": ["P"], "identities": {}}, "x")
    cfg = parse_config(
        OutboundConfig,
        {
            "environments": ["P"],
            "identities": {"user": "userId", "account": "userId"},
            "defaultTrafficType": "account",
        },
        "x",
    )
    assert cfg.traffic_type_default == "account"


@pytest.mark.parametrize("endpoint", ["api.segment.io/v1", "not a url", "ftp://sink.example/v1", ""])
def test_an_endpoint_that_is_not_an_http_url_names_the_field(endpoint: str) -> None:
    with pytest.raises(ConfigInvalid, match="endpoint"):
        parse_config(
            OutboundConfig, {"environments": ["P"], "identities": {"u": "userId"}, "endpoint": endpoint}, "x"
        )


def test_an_endpoint_with_a_trailing_slash_is_the_same_base() -> None:
    cfg = parse_config(
        OutboundConfig,
        {"environments": ["P"], "identities": {"u": "userId"}, "endpoint": "https://sink.example/v1/"},
        "x",
    )
    assert cfg.endpoint_base == "https://sink.example/v1"


def test_computed_trait_names_need_the_split_placeholder() -> None:
    doc = {"environments": ["P"], "identities": {"u": "userId"}}
    with pytest.raises(ConfigInvalid, match="traitName"):
        parse_config(OutboundConfig, {**doc, "computedTraits": {"traitName": "flag_{name}"}}, "x")


def test_cache_seconds_default_to_120_and_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFIG_CACHE_SECONDS", raising=False)
    assert config.cache_seconds() == 120
    monkeypatch.setenv("CONFIG_CACHE_SECONDS", "5")
    assert config.cache_seconds() == 5


def test_listed_parameters_are_the_direct_children_and_are_cached(function_env) -> None:
    function_env("IngestFunction")
    put_config("audiences/a1", {"environment": "P"})
    put_config("audiences/team/a2", {"environment": "P"})
    assert config.list_parameters("audiences") == {"a1": json.dumps({"environment": "P"})}
    put_config("audiences/a3", {"environment": "P"})
    assert set(config.list_parameters("audiences")) == {"a1"}
    config.clear_caches()
    assert set(config.list_parameters("audiences")) == {"a1", "a3"}
