"""How every job verb reaches the search service: ``--endpoint``, ``--token``, ``--tls-ca``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from controller.config import ConfigError
from controller.service.client import SearchClient
from controller.service.tls import read_pem

DEFAULT_ENDPOINT = "127.0.0.1:50070"


def add_connection(p: argparse.ArgumentParser) -> None:
    """The options every job verb shares: where the service is and who is calling."""
    p.add_argument("--endpoint", default=os.environ.get("NAS_ENDPOINT", DEFAULT_ENDPOINT),
                   help="the search service, HOST:PORT (default $NAS_ENDPOINT or "
                        f"{DEFAULT_ENDPOINT})")
    p.add_argument("--token", default=os.environ.get("NAS_TOKEN"),
                   help="the bearer token to call with, when the service has a tokens file "
                        "(default $NAS_TOKEN)")
    p.add_argument("--tls-ca", type=Path, default=os.environ.get("NAS_TLS_CA"),
                   help="connect over TLS, trusting the server certificate this PEM CA "
                        "signed (default $NAS_TLS_CA; neither: plaintext)")


def client_from_args(args: argparse.Namespace) -> SearchClient:
    """A client as the verb's options say; a bad --tls-ca is a ConfigError naming it."""
    try:
        ca = read_pem(args.tls_ca, "--tls-ca") if args.tls_ca else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return SearchClient(args.endpoint, token=args.token, tls_ca=ca)
