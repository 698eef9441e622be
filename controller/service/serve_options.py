"""``nas serve search``'s security and limit options, parsed once into what ``serve_search``
takes. Every bad value raises ServeOptionError naming the option (or FILE:LINE), which the
command prints as one line and exits 2."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

import redis

from controller.service.auth import TokenTable
from controller.service.tenants import TenantBudgets
from controller.service.tls import ServerTls
from protos.cluster_auth import ClusterAuth, add_token_argument, read_pem, resolve_token


class ServeOptionError(ValueError):
    """A bad option of ``nas serve search``; the message names it."""


@dataclass(frozen=True)
class ServeSecurity:
    """Who may call, each tenant's budget, TLS and the concurrent-call bound."""

    tokens: TokenTable | None
    budgets: TenantBudgets
    tls: ServerTls | None
    max_concurrent_rpcs: int | None
    max_workers: int = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register the options on the ``nas serve search`` parser."""
    p.add_argument("--tokens-file", type=Path,
                   help="who may call: one TOKEN:ROLE[:TENANT] per line, ROLE reader (read "
                        "jobs), submitter (also submit and cancel its tenant's jobs) or admin "
                        "(everything, every tenant); TENANT defaults to 'default'; '#' starts a "
                        "comment. Default: $NAS_TOKENS (the same lines, ',' or newline "
                        "separated); neither: the service is open, everyone admin")
    p.add_argument("--tenant-budgets", type=Path,
                   help="trainings each tenant may spend: one TENANT:TRAININGS per line ('*': "
                        "every tenant not listed); a submit beyond it is refused "
                        "(RESOURCE_EXHAUSTED). Default: unlimited")
    p.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path,
                   help="mutual TLS: clients must present a certificate this PEM CA signed")
    p.add_argument("--redis-password",
                   default=os.environ.get("NAS_REDIS_PASSWORD"),
                   help="password of the --redis server (default $NAS_REDIS_PASSWORD; a "
                        "password in the URL wins)")
    p.add_argument("--max-workers", type=int, default=64,
                   help="threads serving calls (64); each open WatchSearch holds one for as "
                        "long as it watches, so raise it for many watchers")
    p.add_argument("--max-concurrent-rpcs", type=int,
                   help="calls served or queued at once; more get RESOURCE_EXHAUSTED "
                        "(default 4 x --max-workers)")


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """The internal endpoints' options: the cluster token, and TLS of the TrialReport server
    and of running shards (--paramservers)."""
    g = p.add_argument_group("cluster security", "Every internal call (to the parameter "
                             "servers, to this service's TrialReport server) carries the "
                             "cluster token; no or a wrong one is UNAUTHENTICATED. Without "
                             "one given, a random token is generated for the shards and Ray "
                             "workers started here (workers of `nas serve worker` then "
                             "cannot join: give both the same $NAS_CLUSTER_TOKEN).")
    add_token_argument(g, server=False)
    g.add_argument("--cluster-tls-cert", type=Path,
                   help="serve the TrialReport service over TLS with this PEM certificate")
    g.add_argument("--cluster-tls-key", type=Path, help="the PEM key of --cluster-tls-cert")
    g.add_argument("--cluster-tls-ca", type=Path,
                   help="the PEM CA that signed the TrialReport and --paramservers "
                        "certificates: this service's workers and its parameter-server "
                        "client dial them over TLS trusting it")


def cluster_auth_from_args(args: argparse.Namespace,
                           environ: dict[str, str] | None = None) -> ClusterAuth:
    """The cluster token ($NAS_CLUSTER_TOKEN or --cluster-token-file; None: one is generated)
    and TLS; ServeOptionError names a bad option."""
    cert, key, ca = args.cluster_tls_cert, args.cluster_tls_key, args.cluster_tls_ca
    try:
        token = resolve_token(args.cluster_token_file, environ)
        if bool(cert) != bool(key):
            raise ServeOptionError("--cluster-tls-cert, --cluster-tls-key: TLS needs both")
        if cert and not ca:
            raise ServeOptionError("--cluster-tls-ca: needed with --cluster-tls-cert (this "
                                   "service's own workers dial its TrialReport server)")
        return ClusterAuth(token, read_pem(ca, "--cluster-tls-ca") if ca else None,
                           read_pem(cert, "--cluster-tls-cert") if cert else None,
                           read_pem(key, "--cluster-tls-key") if key else None)
    except ValueError as exc:  # a bad token file or PEM file
        raise ServeOptionError(str(exc)) from None


def _lines(path: Path, option: str) -> list[str]:
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeOptionError(f"{option}: cannot read {path}: {exc}") from None


def security_from_args(args: argparse.Namespace,
                       environ: dict[str, str] | None = None) -> ServeSecurity:
    """The parsed options; ServeOptionError names a bad one."""
    env = os.environ if environ is None else environ
    try:
        tokens = None
        if args.tokens_file is not None:
            tokens = TokenTable.parse(_lines(args.tokens_file, "--tokens-file"),
                                      str(args.tokens_file))
        elif env.get("NAS_TOKENS", "").strip():
            tokens = TokenTable.parse(re.split(r"[,\n]", env["NAS_TOKENS"]), "$NAS_TOKENS")
        budgets = (TenantBudgets.parse(_lines(args.tenant_budgets, "--tenant-budgets"),
                                       str(args.tenant_budgets))
                   if args.tenant_budgets is not None else TenantBudgets())
        tls = None
        if args.tls_cert or args.tls_key or args.tls_client_ca:
            if not (args.tls_cert and args.tls_key):
                raise ServeOptionError("--tls-cert, --tls-key: TLS needs both")
            tls = ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
    except ValueError as exc:  # TokenFileError, BudgetFileError, a bad PEM file
        raise ServeOptionError(str(exc)) from None
    if args.max_concurrent_rpcs is not None and args.max_concurrent_rpcs < 1:
        raise ServeOptionError(f"--max-concurrent-rpcs: must be >= 1, got "
                               f"{args.max_concurrent_rpcs}")
    if args.max_workers < 1:
        raise ServeOptionError(f"--max-workers: must be >= 1, got {args.max_workers}")
    return ServeSecurity(tokens, budgets, tls, args.max_concurrent_rpcs, args.max_workers)


def connect_redis(url: str, password: str | None) -> redis.Redis:
    """A checked connection to the job store's Redis; ServeOptionError says how to fix a
    refused password or an unreachable server."""
    client = redis.Redis.from_url(url, **({"password": password} if password else {}))
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:  # NOAUTH, WRONGPASS
        client.close()
        raise ServeOptionError(f"--redis-password: Redis at {url} refused the credentials "
                               f"({exc}); pass its requirepass with --redis-password or "
                               f"$NAS_REDIS_PASSWORD") from None
    except redis.ConnectionError as exc:
        client.close()
        raise ServeOptionError(f"--redis: cannot reach {url} ({exc}); is redis-server "
                               f"running there?") from None
    return client
