"""Config loader: every invalid file is rejected with file, path and value in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatekeeper.config import load_config, parse_config
from gatekeeper.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BASE = """
upstreams:
  api: {url: http://127.0.0.1:9000}
routes:
  - name: one
    match: {path: /one}
    upstream: api
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gk.yaml")
    return caught.value.problems


def test_example_configs_load() -> None:
    for path in (ROOT / "config" / "gatekeeper.yaml", ROOT / "examples" / "demo.yaml"):
        assert load_config(path).routes


def test_defaults_apply() -> None:
    config = parse_config(BASE, "gk.yaml")
    route = config.routes[0]
    assert route.cost == 1
    assert route.auth == "jwt"
    assert route.refund_on == ("connect_error", "timeout", "5xx")
    assert config.listen.proxy == "0.0.0.0:8080"
    assert config.redis.timeout_ms == 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE + "    cost: -1\n",
         "routes[0].cost: Input should be greater than or equal to 0 (got -1)"),
        (BASE + "    cost: '5'\n", "routes[0].cost: Input should be a valid integer (got '5')"),
        (BASE + "    colour: red\n", "routes[0].colour: unknown key (got 'red')"),
        (BASE + "extra_section: 1\n", "extra_section: unknown key (got 1)"),
        (BASE + "listen: {proxy: nowhere}\n",
         "listen.proxy: expected host:port, such as 127.0.0.1:8080 (got 'nowhere')"),
        (BASE + "    refund_on: [always]\n",
         "routes[0].refund_on[0]: Input should be 'connect_error', 'timeout' or '5xx' "
         "(got 'always')"),
        (BASE.replace("http://127.0.0.1:9000", "ftp://x"),
         "upstreams.api.url: each URL must start with http:// or https:// (got 'ftp://x')"),
        (BASE + "auth:\n  jwt: {algorithms: [none], secret_env: S}\n",
         "auth.jwt.algorithms: 'none' is never accepted (got ['none'])"),
        (BASE + "redis: {url: 'memcached://x'}\n",
         "redis.url: must be 'embedded' or a redis://, rediss://, redis+cluster:// URL "
         "(got 'memcached://x')"),
        (BASE.replace("    upstream: api\n", ""), "routes[0].upstream: required key is missing"),
    ],
)
def test_invalid_value_rejected(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_duplicate_route_name_rejected() -> None:
    text = BASE + "  - name: one\n    match: {path: /two}\n    upstream: api\n"
    assert problems(text) == [
        "routes[1].name: duplicate route name, first used by routes[0] (got 'one')"
    ]


def test_missing_upstream_rejected() -> None:
    text = BASE + "  - name: two\n    match: {path: /two}\n    upstream: billing\n"
    assert problems(text) == ["routes[1].upstream: unknown upstream, known: api (got 'billing')"]


def test_duplicate_yaml_key_rejected() -> None:
    assert problems("listen: {}\nlisten: {}\n") == ["line 2: duplicate key 'listen'"]


def test_message_names_file() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + "    cost: -1\n", "config/prod.yaml")
    assert str(caught.value).startswith("config/prod.yaml: routes[0].cost:")


def test_unreadable_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml")
    assert "cannot read the file" in str(caught.value)


def test_auth_none_route_must_be_free() -> None:
    text = BASE + "    auth: none\n    cost: 2\n"
    assert problems(text) == [
        "routes[0]: routes with auth: none are free: set cost: 0 and drop scopes and pool"
    ]


def test_pool_template_must_start_with_tenant() -> None:
    text = BASE + "    pool: 'other/{tenant}'\n"
    assert problems(text)[0].startswith("routes[0].pool: must start with '{tenant}'")


def test_top_level_must_be_mapping() -> None:
    assert problems("- a\n- b\n") == ["(top level): expected a mapping of keys, got a list"]


def test_pattern_climbing_above_root_rejected() -> None:
    text = BASE.replace("match: {path: /one}", "match: {path_prefix: /a/../..}")
    assert problems(text)[0].startswith("routes[0].match.path_prefix: ")
    assert problems(text)[0].endswith("(got '/a/../..')")
