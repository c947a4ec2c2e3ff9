"""Request bodies of the admin API, validated strictly (unknown fields are errors)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from gatekeeper.errors import BadRequest
from gatekeeper.ledger.models import MAX_TICKETS

Tickets = Annotated[int, Field(strict=True, ge=1, le=MAX_TICKETS)]
TicketFloor = Annotated[int, Field(strict=True, ge=0, le=MAX_TICKETS)]
MAX_NOTE_LENGTH = 500


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrantBody(Body):
    tickets: Tickets
    expires_at: AwareDatetime | None = None
    note: Annotated[str, Field(max_length=MAX_NOTE_LENGTH)] | None = None

    @field_validator("expires_at")
    @classmethod
    def _check_utc_year(cls, value: datetime | None) -> datetime | None:
        # A time such as 9999-12-31T23:59:59-12:00 is in year 10000 in UTC, which the pool
        # object could not show.
        if value is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError("must fall within the years 1 to 9999 in UTC") from None
        return value


class AutoRefill(Body):
    below: TicketFloor
    amount: Tickets


class PoolSettingsBody(Body):
    parent: str | None = None
    borrow: Annotated[bool, Field(strict=True)] | None = None
    auto_refill: AutoRefill | None = None
    reserve: TicketFloor | None = None
    overdraft: TicketFloor | None = None
    low_balance: TicketFloor | None = None


class TransferBody(Body):
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    tickets: Tickets


BodyT = TypeVar("BodyT", bound=Body)


def parse_body(model: type[BodyT], data: Any) -> BodyT:
    """Validate ``data`` against ``model``.

    Raises:
        BadRequest: naming the first invalid field and the reason.
    """
    if not isinstance(data, dict):
        raise BadRequest(f"The request body must be a JSON object, not {_json_kind(data)}.")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"Invalid field {where!r}: {first['msg']}.",
                         errors=[_public(item) for item in error.errors()]) from None


def _json_kind(data: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(data), "a number")


def _public(item: Any) -> dict[str, Any]:
    return {"field": ".".join(str(part) for part in item["loc"]), "message": item["msg"]}
