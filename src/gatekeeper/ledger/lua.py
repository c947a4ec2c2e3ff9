"""The ledger's Lua scripts: loaded from package data, registered once, called by SHA.

Each ``scripts/<verb_noun>.lua`` file is one atomic operation. ``scripts/_pool.lua`` contains
the helpers they share; it is prepended to each script, so every script is self-contained
on the server. A server that lacks a script (after a restart, ``SCRIPT FLUSH`` or a
failover) answers NOSCRIPT; the caller then loads it on every primary and resends.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog
from redis.exceptions import NoScriptError

from gatekeeper.ledger.client import RedisClient

log = structlog.get_logger("gatekeeper.ledger.lua")

SCRIPT_FILES = {
    "charge": "charge.lua",
    "refund": "refund.lua",
    "settle": "settle.lua",
    "grant": "grant.lua",
    "transfer": "transfer.lua",
    "configure_pool": "configure_pool.lua",
    "read_pool": "read_pool.lua",
}
SHARED_FILE = "_pool.lua"
# Script loads per call before a NOSCRIPT error fails it. A call that got NOSCRIPT did not
# run, so resending it is safe. More than one load covers a second flush or failover that
# lands between the load and the resend.
MAX_SCRIPT_LOADS = 3


@dataclass(frozen=True, slots=True)
class Script:
    """One registered script: its name, full source and SHA1."""

    name: str
    source: str
    sha: str


def _read(file: str) -> str:
    return resources.files("gatekeeper.ledger").joinpath("scripts", file).read_text("utf-8")


def load_scripts() -> dict[str, Script]:
    """Read every script from package data and compute its SHA1.

    Returns:
        Scripts by name, each with the shared helpers prepended.
    """
    shared = _read(SHARED_FILE)
    scripts = {}
    for name, file in SCRIPT_FILES.items():
        source = f"{shared}\n-- {file}\n{_read(file)}"
        sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
        scripts[name] = Script(name=name, source=source, sha=sha)
    return scripts


async def register(client: RedisClient, script: Script) -> None:
    """Load ``script`` into the server's script cache (every primary of a cluster)."""
    await client.script_load(script.source)


async def run(client: RedisClient, script: Script, keys: list[str], args: list[Any]) -> Any:
    """Call ``script`` by SHA; on NOSCRIPT load it and resend, up to ``MAX_SCRIPT_LOADS`` times.

    Args:
        client: the ledger's Redis client.
        script: the script to call.
        keys: key names, all of one tenant.
        args: numbers and strings for ARGV.

    Returns:
        The script's reply.
    """
    for _attempt in range(MAX_SCRIPT_LOADS):
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            log.info("ledger_script_loaded", script=script.name, sha=script.sha)
            await register(client, script)
    return await client.evalsha(script.sha, len(keys), *keys, *args)
