"""Command line: ``gatekeeper serve``, ``check-config``, ``token``, ``demo`` and ``ledger``.

Every command that needs the config takes ``--config PATH``, defaulting to
``$GATEKEEPER_CONFIG``, then ``config/gatekeeper.yaml``. Exit codes: 0 success, 1 failure
(invalid config, failed check), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gatekeeper.errors import ConfigError
from gatekeeper.log import configure_logging

if TYPE_CHECKING:
    from gatekeeper.config import Config

DEFAULT_CONFIG = "config/gatekeeper.yaml"

# Commands import what they need inside their function, so `check-config` and `--help` start
# without loading aiohttp, redis and the crypto backends.


def default_config() -> str:
    return os.environ.get("GATEKEEPER_CONFIG") or DEFAULT_CONFIG


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="PATH",
        help=f"config file (default: $GATEKEEPER_CONFIG, then {DEFAULT_CONFIG})",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatekeeper",
        description="Reverse proxy that charges prepaid tickets per request.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy and admin listeners")
    _add_config(serve)
    serve.add_argument("--workers", type=_worker_count, default=None, metavar="N",
                       help="worker processes, 1 to 256 (default: server.workers, then one "
                            "per CPU)")
    # Set by the supervisor when it starts a worker process; not for operators.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    check = commands.add_parser("check-config", help="validate a config file; exit 0 or 1")
    check.add_argument("path", metavar="PATH", help="config file to validate")

    token = commands.add_parser("token", help="mint an HS* test token from the config's secret")
    _add_config(token)
    token.add_argument("--tenant", required=True, help="tenant id to put in the token")
    token.add_argument("--team", default=None, help="team id to put in the token")
    token.add_argument("--scope", action="append", default=[], help="scope; repeat for several")
    token.add_argument("--ttl", type=_positive_int, default=3600,
                       help="lifetime in seconds (default 3600)")

    demo = commands.add_parser("demo", help="run a gateway, sample API and embedded Redis, "
                                            "spend tickets until 402, then keep serving")
    demo.add_argument("--no-wait", action="store_true", help="exit after the scripted requests")

    ledger = commands.add_parser("ledger", help="ledger maintenance")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    verify = ledger_commands.add_parser(
        "verify", help="check conservation of every pool of a tenant; exit 0 when every "
                       "pool balances, 1 when one does not, 2 when Redis cannot be reached"
    )
    _add_config(verify)
    verify.add_argument("--tenant", required=True, help="tenant whose pools are checked")
    return parser


def _check_config(path: str) -> int:
    from gatekeeper.config import parse_config
    from gatekeeper.config.loader import config_warnings
    from gatekeeper.runtime import read_source

    try:
        source = read_source(path)
        config = parse_config(source.text, source.path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.routes)} routes, {len(config.upstreams)} upstreams, "
          f"version {source.version})")

    for warning in config_warnings(config):
        print(f"{path}: warning: {warning}", file=sys.stderr)

    # Secrets live in the environment of the server, not in the file, so an unset variable
    # here is a warning: the check may run in CI where the secrets are absent.
    variables = [issuer.secret_env for issuer in config.auth.jwt if issuer.secret_env]
    variables += [config.admin.token_env] if config.admin.token_env else []
    variables += list((config.admin.tokens or {}).values())
    for variable in variables:
        if not os.environ.get(variable):
            print(f"{path}: warning: environment variable {variable} is unset here; "
                  "`gatekeeper serve` needs it", file=sys.stderr)
    return 0


def _worker_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be from 1 to 256, got {value}")
    return value


def _serve(config_path: str, workers: int | None, worker: bool) -> int:
    # The supervisor and its workers share stderr. print() writes a line and its newline
    # separately to an unbuffered stream, so line buffering keeps each printed line whole.
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(line_buffering=True, write_through=False)
    if worker:
        from gatekeeper.server import worker_main

        return worker_main()
    # The supervisor's private directory contains the accepted config and the metrics files of
    # every worker. PROMETHEUS_MULTIPROC_DIR must be set before prometheus-client is
    # imported, in the supervisor and (through the inherited environment) in each worker.
    state_dir = Path(tempfile.mkdtemp(prefix="gatekeeper-"))
    metrics_dir = state_dir / "metrics"
    metrics_dir.mkdir(mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        from gatekeeper.supervisor import run_supervisor

        return run_supervisor(config_path, workers, state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def _load(path: str) -> Config | None:
    """Load the config, printing every problem when it is invalid."""
    from gatekeeper.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _token(args: argparse.Namespace) -> int:
    from gatekeeper.auth.mint import mint_token

    path = args.config or default_config()
    config = _load(path)
    if config is None:
        return 1
    issuer = next((i for i in config.auth.jwt if i.secret_env), None)
    if issuer is None or issuer.secret_env is None:
        print(f"{path}: no auth.jwt issuer with secret_env; tokens for public-key issuers "
              "come from your identity provider", file=sys.stderr)
        return 1
    secret = os.environ.get(issuer.secret_env)
    if not secret:
        print(f"environment variable {issuer.secret_env} is unset or empty", file=sys.stderr)
        return 1
    try:
        token = mint_token(
            secret,
            tenant=args.tenant,
            team=args.team,
            scopes=tuple(args.scope),
            ttl_s=args.ttl,
            issuer=issuer.issuer,
            audience=issuer.audience[0] if issuer.audience else None,
            algorithm=issuer.algorithms[0],
            tenant_claim=issuer.tenant_claim,
            team_claim=issuer.team_claim,
        )
    except ValueError as exc:
        print(f"gatekeeper token: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _ledger_verify(args: argparse.Namespace) -> int:
    from gatekeeper.embedded import running_url
    from gatekeeper.ledger.verify import run_verify

    config = _load(args.config or default_config())
    if config is None:
        return 1
    url = config.redis.url
    if url == "embedded":
        found = running_url(config.redis.data_dir)
        if found is None:
            print(f"no embedded Redis is running for {config.redis.data_dir}; "
                  "start `gatekeeper serve` with this config first", file=sys.stderr)
            return 2
        url = found
    return asyncio.run(run_verify(url, config.redis.key_prefix, args.tenant))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.path)

    configure_logging()
    if args.command == "serve":
        return _serve(args.config or default_config(), args.workers, args.worker)
    if args.command == "token":
        return _token(args)
    if args.command == "demo":
        from gatekeeper.demo import run_demo

        return run_demo(wait=not args.no_wait)
    return _ledger_verify(args)
