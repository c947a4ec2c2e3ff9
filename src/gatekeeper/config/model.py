"""Frozen configuration model: every key an operator may write, with its type and default.

Unknown keys are errors everywhere (``extra="forbid"``), scalars are strict (``"5"`` is
not a cost), and lists become tuples so a loaded config cannot be changed in place.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

StrictStr = Annotated[str, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]
StrictInt = Annotated[int, Field(strict=True)]
PositiveSeconds = Annotated[float, Field(gt=0)]

# Tickets are integers from 1 to 2**53 - 1 so that they stay exact in Lua doubles and JSON.
MAX_TICKETS = 2**53 - 1
Tickets = Annotated[int, Field(strict=True, ge=0, le=MAX_TICKETS)]

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RefundKind = Literal["connect_error", "timeout", "5xx"]
REFUND_KINDS: tuple[RefundKind, ...] = ("connect_error", "timeout", "5xx")
HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]*):(?P<port>\d{1,5})$")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_tuple(value: Any) -> Any:
    """Accept one item where a list is expected, so `url: http://x` and `url: [..]` both work."""
    if value is None or isinstance(value, list | tuple):
        return value
    return (value,)


def split_host_port(address: str) -> tuple[str, int]:
    """Split a `host:port` listen address; an empty host means every interface."""
    found = HOST_PORT.match(address)
    if found is None:
        raise ValueError("expected host:port, such as 127.0.0.1:8080")
    host = found["host"].strip("[]") or "0.0.0.0"
    port = int(found["port"])
    if port > 65535:
        raise ValueError(f"port {port} is above 65535")
    return host, port


class Listen(Model):
    proxy: StrictStr = "0.0.0.0:8080"
    admin: StrictStr = "127.0.0.1:9090"

    @field_validator("proxy", "admin")
    @classmethod
    def _check_address(cls, value: str) -> str:
        split_host_port(value)
        return value


class Server(Model):
    workers: Annotated[int, Field(strict=True, ge=1, le=256)] | None = None
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 30.0


class Redis(Model):
    url: StrictStr = "embedded"
    data_dir: StrictStr = "./.gatekeeper/redis"
    key_prefix: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "gk"
    timeout_ms: Annotated[int, Field(strict=True, ge=1, le=60_000)] = 200
    max_connections: Annotated[int, Field(strict=True, ge=1, le=10_000)] = 64

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        schemes = ("redis://", "rediss://", "redis+cluster://", "unix://")
        if value != "embedded" and not value.startswith(schemes):
            raise ValueError("must be 'embedded' or a redis://, rediss://, redis+cluster:// URL")
        return value


class JwksCache(Model):
    min_s: Annotated[float, Field(ge=0)] = 60
    max_s: Annotated[float, Field(ge=0)] = 3600
    refetch_s: Annotated[float, Field(ge=0)] = 30
    max_stale_s: Annotated[float, Field(ge=0)] = 3600

    @model_validator(mode="after")
    def _check_order(self) -> JwksCache:
        if self.min_s > self.max_s:
            raise ValueError(f"min_s ({self.min_s}) must not exceed max_s ({self.max_s})")
        return self


class JwtIssuer(Model):
    issuer: StrictStr | None = None
    audience: tuple[StrictStr, ...] | None = None
    algorithms: tuple[StrictStr, ...]
    jwks_url: StrictStr | None = None
    public_key_file: StrictStr | None = None
    secret_env: StrictStr | None = None
    jwks_cache: JwksCache = JwksCache()
    leeway_s: Annotated[int, Field(strict=True, ge=0, le=3600)] = 30
    tenant_claim: StrictStr = "tenant_id"
    team_claim: StrictStr | None = None
    scope_claim: StrictStr = "scope"
    # Claims a token must carry besides those implied by issuer and audience.
    required_claims: tuple[StrictStr, ...] = ("exp",)

    _audience_list = field_validator("audience", mode="before")(_as_tuple)

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, value: str | None) -> str | None:
        if value == "":
            raise ValueError("must not be empty. Leave it out to accept any iss.")
        return value

    @field_validator("audience")
    @classmethod
    def _check_audience(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or not all(value)):
            raise ValueError("must name at least one non-empty audience, or be left out")
        return value

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must list at least one algorithm")
        supported = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
                     "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
        for name in value:
            if name.lower() == "none":
                raise ValueError("'none' is never accepted")
            if name not in supported:
                raise ValueError(f"unsupported algorithm {name!r}; use one of {sorted(supported)}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme == "https" and url.hostname:
            return value
        if url.scheme == "http" and url.hostname and cls._is_loopback(url.hostname):
            return value
        raise ValueError(
            "must be an https:// URL, because http:// is accepted only for localhost, "
            "127.0.0.0/8 and ::1"
        )

    @staticmethod
    def _is_loopback(host: str) -> bool:
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @field_validator("tenant_claim", "team_claim", "scope_claim")
    @classmethod
    def _check_claim_path(cls, value: str | None) -> str | None:
        if value is not None and not value.strip("."):
            raise ValueError("must name a claim, such as 'tenant_id' or 'org.id'")
        return value

    @field_validator("required_claims")
    @classmethod
    def _check_required_claims(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "exp" not in value:
            raise ValueError("must include 'exp', because tokens without expiry are never accepted")
        return value

    @model_validator(mode="after")
    def _check_key_source(self) -> JwtIssuer:
        sources = [s for s in (self.jwks_url, self.public_key_file, self.secret_env) if s]
        if len(sources) != 1:
            raise ValueError("set exactly one of jwks_url, public_key_file, secret_env")
        hmac = {a for a in self.algorithms if a.startswith("HS")}
        if self.secret_env and hmac != set(self.algorithms):
            raise ValueError("secret_env keys verify only HS256/HS384/HS512 tokens")
        if not self.secret_env and hmac:
            raise ValueError("HS* algorithms need secret_env; public keys never verify HMAC")
        return self


class Auth(Model):
    jwt: tuple[JwtIssuer, ...] = ()
    # Maximum number of verified tokens kept in memory; 0 turns the cache off.
    token_cache_size: Annotated[int, Field(strict=True, ge=0, le=10_000_000)] = 10_000

    _jwt_list = field_validator("jwt", mode="before")(_as_tuple)

    @model_validator(mode="after")
    def _check_issuers(self) -> Auth:
        if len(self.jwt) > 1:
            names = [issuer.issuer for issuer in self.jwt]
            if None in names:
                raise ValueError("with several issuers, each needs 'issuer' to select it")
            if len(set(names)) != len(names):
                raise ValueError("issuers must be unique")
        return self


class Admin(Model):
    token_env: StrictStr | None = None
    tokens: dict[StrictStr, StrictStr] | None = None

    @model_validator(mode="after")
    def _check_one(self) -> Admin:
        if self.token_env and self.tokens:
            raise ValueError("set token_env or tokens, not both")
        return self


class Proxy(Model):
    trusted_proxies: tuple[StrictStr, ...] = ()
    max_body_bytes: Annotated[int, Field(strict=True, ge=0)] = 10 * 1024 * 1024

    @field_validator("trusted_proxies")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value


class Upstream(Model):
    url: tuple[StrictStr, ...]
    connect_timeout_s: PositiveSeconds = 2.0
    read_timeout_s: PositiveSeconds = 60.0
    preserve_host: StrictBool = False
    strip_authorization: StrictBool = False

    _url_list = field_validator("url", mode="before")(_as_tuple)

    @field_validator("url")
    @classmethod
    def _check_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one URL")
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError("each URL must start with http:// or https://")
        return value


class Match(Model):
    path: StrictStr | None = None
    path_prefix: StrictStr | None = None
    methods: tuple[StrictStr, ...] | None = None
    host: StrictStr | None = None

    @model_validator(mode="after")
    def _check_path(self) -> Match:
        if (self.path is None) == (self.path_prefix is None):
            raise ValueError("set exactly one of path, path_prefix")
        pattern = self.path if self.path is not None else self.path_prefix
        if not pattern or not pattern.startswith("/"):
            raise ValueError(f"path must start with '/', got {pattern!r}")
        return self

    @field_validator("methods")
    @classmethod
    def _upper_methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must list at least one method, or be left out")
        return tuple(method.upper() for method in value)


class Route(Model):
    name: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
    match: Match
    upstream: StrictStr
    cost: Tickets = 1
    auth: Literal["jwt", "none"] = "jwt"
    scopes: tuple[StrictStr, ...] = ()
    pool: StrictStr | None = None
    critical: StrictBool = False
    shadow: StrictBool = False
    refund_on: tuple[RefundKind, ...] = REFUND_KINDS
    on_ledger_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    cost_header: StrictStr | None = None
    max_body_bytes: Annotated[int, Field(strict=True, ge=0)] | None = None

    @field_validator("pool")
    @classmethod
    def _check_pool_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        rendered = value.replace("{tenant}", "t").replace("{team}", "t")
        parts = rendered.split("/")
        if "{tenant}" not in value or not value.startswith("{tenant}"):
            raise ValueError("must start with '{tenant}' so a route never charges another tenant")
        if len(parts) > 2 or not all(ID_PATTERN.match(part) for part in parts):
            raise ValueError("must render to 'tenant' or 'tenant/team' ids")
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> Route:
        if self.auth == "none" and (self.scopes or self.pool or self.cost):
            raise ValueError(
                "routes with auth: none are free: set cost: 0 and drop scopes and pool"
            )
        return self


class Ledger(Model):
    max_deferred_tickets: Annotated[int, Field(strict=True, ge=0)] = 1000
    journal_path: StrictStr = "./.gatekeeper/journal"
    # Seconds Redis keeps a charge record or refund tombstone. It bounds how late a retry,
    # refund, settlement or journal replay of a charge still finds the record.
    charge_ttl_s: Annotated[int, Field(strict=True, ge=1)] = 3600


# The charge TTL must be at least this many times the largest upstream read_timeout_s, so a
# charge record outlives the request, its refund and its settlement with room to spare.
CHARGE_TTL_FACTOR = 3


def check_charge_ttl(ledger: Ledger, upstreams: dict[str, Upstream]) -> None:
    """Raise ``ValueError`` when ``ledger.charge_ttl_s`` is too short for an upstream."""
    if not upstreams:
        return
    name, upstream = max(upstreams.items(), key=lambda item: item[1].read_timeout_s)
    minimum = math.ceil(CHARGE_TTL_FACTOR * upstream.read_timeout_s)
    if ledger.charge_ttl_s < minimum:
        raise ValueError(
            f"charge_ttl_s must be at least {minimum}, {CHARGE_TTL_FACTOR} times the largest "
            f"upstream read timeout (upstreams.{name}.read_timeout_s is "
            f"{upstream.read_timeout_s:g}), so raise it or lower that timeout "
            f"(got {ledger.charge_ttl_s})"
        )


class Metrics(Model):
    tenant_labels: StrictBool = False


class Config(Model):
    listen: Listen = Listen()
    server: Server = Server()
    redis: Redis = Redis()
    auth: Auth = Auth()
    admin: Admin = Admin()
    proxy: Proxy = Proxy()
    upstreams: dict[StrictStr, Upstream] = {}
    routes: tuple[Route, ...] = ()
    # Validated also when left out, because the default TTL may be too short for an upstream.
    ledger: Ledger = Field(default_factory=Ledger, validate_default=True)
    metrics: Metrics = Metrics()

    @field_validator("ledger")
    @classmethod
    def _check_charge_ttl(cls, value: Ledger, info: ValidationInfo) -> Ledger:
        # ``upstreams`` is declared before ``ledger``, so it is in info.data when valid.
        check_charge_ttl(value, info.data.get("upstreams") or {})
        return value
