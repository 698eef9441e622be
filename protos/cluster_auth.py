"""The cluster token: the shared secret every internal RPC carries (parameter servers, the
controller's TrialReport service), and optional TLS for those servers.

A server checks the metadata ``authorization: Bearer TOKEN`` of every call (constant-time
compare); no or a wrong token is UNAUTHENTICATED. The standard health and reflection services
stay open: probes and ``grpcurl list`` need no secret, and they reveal nothing but the service
names. A client adds the metadata to every call of its channel.

The token comes from the environment (``$NAS_CLUSTER_TOKEN``) or a file only readable by its
owner (``--cluster-token-file``), never from a command line (``ps`` would show it).

    auth = ClusterAuth(token, ca=ca_pem)            # a client: auth.channel("host:port")
    start_server(..., interceptors=auth.interceptors(), credentials=auth.server_credentials())
"""

from __future__ import annotations

import argparse
import hmac
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from protos.rpc import CHANNEL_OPTIONS

TOKEN_ENV = "NAS_CLUSTER_TOKEN"
TOKEN_FILE_FLAG = "--cluster-token-file"
INSECURE_FLAG = "--insecure-no-token"
# open to every caller: they answer SERVING/NOT_SERVING and list service names, nothing else
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")


class ClusterAuthError(ValueError):
    """A bad token file or TLS file; the message names the flag."""


def generate_token() -> str:
    """A fresh random token (256 bits), for a cluster our tooling starts itself."""
    return secrets.token_urlsafe(32)


def read_token_file(path: Path, flag: str = TOKEN_FILE_FLAG) -> str:
    """The token in ``path``; ClusterAuthError naming ``flag`` when the file cannot be read, is
    empty, or is readable by its group or by others (it must be mode 0600 or stricter)."""
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ClusterAuthError(f"{flag}: {path} is accessible by group or others (mode "
                                   f"{stat.S_IMODE(mode):o}); run `chmod 600 {path}`")
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterAuthError(f"{flag}: cannot read {path}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    if not token or any(c.isspace() for c in token):
        raise ClusterAuthError(f"{flag}: {path} must hold one token (no spaces)")
    return token


def resolve_token(path: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The token of ``--cluster-token-file`` when given, else ``$NAS_CLUSTER_TOKEN``, else
    None."""
    if path is not None:
        return read_token_file(path)
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "").strip()
    if token and any(c.isspace() for c in token):
        raise ClusterAuthError(f"${TOKEN_ENV}: must be one token (no spaces)")
    return token or None


def read_pem(path: Path, option: str) -> bytes:
    """A PEM file's bytes; ValueError naming ``option`` when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ClusterAuthError(f"{option}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ClusterAuthError(f"{option}: {path} is not a PEM file")
    return data


def _deny(message: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call without ``authorization: Bearer <token>``, except
    those of ``OPEN_SERVICES``."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("token: must not be empty")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = str(handler_call_details.method)
        if method.lstrip("/").split("/", 1)[0] in OPEN_SERVICES:
            return continuation(handler_call_details)
        sent = [v for k, v in handler_call_details.invocation_metadata or ()
                if k == "authorization"]
        if not sent:
            return _deny("no cluster token: send the metadata `authorization: Bearer TOKEN` "
                         f"(the cluster's ${TOKEN_ENV})")
        value = sent[0].encode() if isinstance(sent[0], str) else bytes(sent[0])
        if len(sent) > 1 or not hmac.compare_digest(value, self._expected):
            return _deny("wrong cluster token")
        return continuation(handler_call_details)


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _AddToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _details(self, d: grpc.ClientCallDetails) -> _Details:
        metadata = [*(d.metadata or ()), self._entry]
        return _Details(d.method, d.timeout, metadata, d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


@dataclass(frozen=True)
class ClusterAuth:
    """What a process of the cluster presents and checks: the ``token`` (None: none, an open
    server), the CA its clients trust (``ca``: TLS; None: plaintext) and, on a server, its
    certificate chain and key (``cert``, ``key``: serve TLS only). Picklable: a Ray task gets
    ``for_clients()``."""

    token: str | None
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def __repr__(self) -> str:  # never print the secrets
        return (f"ClusterAuth(token={'set' if self.token else None}, tls_ca={self.ca is not None}"
                f", tls_server={self.cert is not None})")

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        """The server interceptors checking the token (none without a token)."""
        return [TokenInterceptor(self.token)] if self.token else []

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS server credentials when a certificate is set."""
        if self.cert is None or self.key is None:
            return None
        return grpc.ssl_server_credentials([(self.key, self.cert)])

    def for_clients(self) -> ClusterAuth:
        """The same without the server's key: what a client (a Ray task) may carry."""
        return replace(self, cert=None, key=None)

    def channel(self, address: str) -> grpc.Channel:
        """A channel to ``address`` over TLS when ``ca`` is set, sending the token."""
        if self.ca is not None:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(self.ca),
                                          options=CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        return grpc.intercept_channel(channel, _AddToken(self.token)) if self.token else channel


def open_channel(address: str, auth: ClusterAuth | None) -> grpc.Channel:
    """``auth.channel(address)``, or a plaintext channel without a token."""
    if auth is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return auth.channel(address)


def add_token_argument(p: argparse.ArgumentParser | Any, server: bool) -> None:
    """``--cluster-token-file`` (and, on a server, ``--insecure-no-token``)."""
    p.add_argument(TOKEN_FILE_FLAG, type=Path, metavar="FILE",
                   help=f"the cluster token, in a file only its owner may read (chmod 600); "
                        f"default ${TOKEN_ENV}. Internal RPCs carry it as `authorization: "
                        f"Bearer TOKEN`")
    if server:
        p.add_argument(INSECURE_FLAG, action="store_true",
                       help="serve without a cluster token: anyone who reaches the port may "
                            "call (refused otherwise when no token is given)")


def server_auth(args: argparse.Namespace, cert: Path | None, key: Path | None,
                where: str = "--tls-cert, --tls-key") -> ClusterAuth:
    """A server's ClusterAuth from its options: ClusterAuthError naming the flag when no token
    is given without ``--insecure-no-token``, or for a bad file."""
    token = resolve_token(getattr(args, TOKEN_FILE_FLAG[2:].replace("-", "_")))
    if token is None and not getattr(args, "insecure_no_token", False):
        raise ClusterAuthError(f"{TOKEN_FILE_FLAG}: no cluster token (set ${TOKEN_ENV} or "
                               f"{TOKEN_FILE_FLAG} FILE; {INSECURE_FLAG} serves anyone)")
    if bool(cert) != bool(key):
        raise ClusterAuthError(f"{where}: TLS needs both")
    return ClusterAuth(token, None, read_pem(cert, where.split(",")[0]) if cert else None,
                       read_pem(key, where.split(", ")[-1]) if key else None)
