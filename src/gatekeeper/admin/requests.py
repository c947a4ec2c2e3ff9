"""Reading admin requests: JSON bodies, pool ids from the path and idempotency keys."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gatekeeper.errors import BadRequest
from gatekeeper.ledger.keys import split_pool
from gatekeeper.ledger.models import validate_token_id

MAX_BODY_BYTES = 64 * 1024


async def read_json(request: web.Request) -> Any:
    """Return the parsed JSON body.

    Raises:
        BadRequest: for a body that is too large, not UTF-8, not JSON or nested too deeply.
    """
    raw = bytearray()
    # read(n) returns what has arrived so far, so a body sent in pieces needs a loop.
    while len(raw) <= MAX_BODY_BYTES:
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as error:
        # Also covers UnicodeDecodeError and integers longer than Python's 4300-digit limit.
        raise BadRequest(f"The request body is not valid JSON: {error}.") from None
    except RecursionError:
        raise BadRequest("The request body is not valid JSON: it is nested too deeply.") from None


def pool_id(value: str) -> str:
    """Return a validated pool id, ``tenant`` or ``tenant/team``.

    Raises:
        BadRequest: for an invalid id.
    """
    try:
        split_pool(value)
    except ValueError as error:
        raise BadRequest(str(error).capitalize() + ".", pool=value) from None
    return value


def pool_from_path(request: web.Request) -> str:
    """Return the pool id of the path (URL-decoded, so ``acme%2Fml`` is ``acme/ml``)."""
    return pool_id(request.match_info["pool"])


def idempotency_key(request: web.Request) -> str:
    """Return the ``Idempotency-Key`` header.

    Raises:
        BadRequest: when it is missing or not 1-200 visible ASCII characters.
    """
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise BadRequest("This request needs an Idempotency-Key header; send a new unique "
                         "value per operation.")
    try:
        return validate_token_id(key.strip('"'), "Idempotency-Key")
    except ValueError as error:
        raise BadRequest(f"Invalid header: {error}.") from None
