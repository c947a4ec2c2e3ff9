"""Key layout and input checks of the ledger, without Redis."""

from __future__ import annotations

import pytest

from gatekeeper.ledger import ChargeRequest
from gatekeeper.ledger.keys import KeyBuilder, split_pool
from gatekeeper.ledger.models import validate_charge, validate_tickets


def test_pool_keys_share_tenant_tag() -> None:
    keys = KeyBuilder("gk")
    team = keys.pool("acme/ml")
    assert team.settings == "gk:{acme}:pool:acme/ml"
    assert keys.pool("acme").grants == "gk:{acme}:grants:acme"
    assert keys.charge("acme", "c1") == "gk:{acme}:charge:c1"


def test_prefix_is_first() -> None:
    assert KeyBuilder("prod").usage("acme") == "prod:{acme}:usage"


@pytest.mark.parametrize("pool", ["", "a/b/c", "-a", "a/", "a b", "x" * 65, "{a}", "a/{b}"])
def test_invalid_pool_ids(pool: str) -> None:
    with pytest.raises(ValueError, match="invalid pool id"):
        split_pool(pool)


def test_team_pool_split() -> None:
    assert split_pool("acme/ml") == ("acme", "ml")


def test_tenant_pool_split() -> None:
    assert split_pool("acme") == ("acme", None)


@pytest.mark.parametrize("value", [0, -1, 2**53, True, 1.0, "5"])
def test_invalid_tickets(value: object) -> None:
    with pytest.raises(ValueError, match="tickets"):
        validate_tickets(value)


def test_max_tickets_accepted() -> None:
    assert validate_tickets(2**53 - 1) == 2**53 - 1


def test_charge_other_tenant_rejected() -> None:
    request = ChargeRequest("acme", ("other",), 1, "r", "c1")
    with pytest.raises(ValueError, match="does not belong"):
        validate_charge(request)


def test_charge_id_with_space_rejected() -> None:
    request = ChargeRequest("acme", ("acme",), 1, "r", "c 1")
    with pytest.raises(ValueError, match="charge_id"):
        validate_charge(request)
