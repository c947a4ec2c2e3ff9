"""Request bodies of the admin API, validated strictly (unknown fields are errors)."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

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
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"Invalid field {where!r}: {first['msg']}.",
                         errors=[_public(item) for item in error.errors()]) from None


def _public(item: Any) -> dict[str, Any]:
    return {"field": ".".join(str(part) for part in item["loc"]), "message": item["msg"]}
