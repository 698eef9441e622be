"""Who may call what: bearer tokens, roles and tenants of the search service.

A token file has one ``TOKEN:ROLE[:TENANT]`` per line (``#`` comments and blank lines allowed);
roles are ordered reader < submitter < admin. Every SearchService method is listed in
``METHOD_ROLES`` with the least role it needs, so a new RPC cannot be served until someone
decides who may call it (``serve_search`` refuses to start otherwise, and a test checks the
table against the service descriptor).

Tenancy: a non-admin sees and touches only its tenant's jobs; another tenant's job answers
NOT_FOUND, exactly as a job that does not exist, so job ids of other tenants do not leak.
Jobs record the caller's ``name`` (a hash of the token, never the token) as their owner.

The identity of the current call lives in a context variable, set around the servicer method by
the server interceptor (``AuthInterceptor``) or by the in-process client (``acting_as``).
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from protos.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError


class Role(enum.IntEnum):
    """What a token may do; each role may do everything of the roles below it."""

    READER = 1
    SUBMITTER = 2
    ADMIN = 3


# SearchService method -> the least role that may call it. WatchSearch and ExportBest are read-only
# RPCs of this issue, listed ahead of their arrival.
METHOD_ROLES: dict[str, Role] = {
    "GetSearch": Role.READER, "ListSearches": Role.READER, "ListTrials": Role.READER,
    "GetBest": Role.READER, "WatchSearch": Role.READER, "ExportBest": Role.READER,
    "SubmitSearch": Role.SUBMITTER, "CancelSearch": Role.SUBMITTER,
}
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Identity:
    """The caller of one RPC."""

    name: str  # recorded as a job's owner
    role: Role
    tenant: str

    def sees(self, tenant: str) -> bool:
        """Whether this caller may see and act on jobs of ``tenant``."""
        return self.role is Role.ADMIN or tenant == self.tenant


OPEN_IDENTITY = Identity("anonymous", Role.ADMIN, DEFAULT_TENANT)  # a service without tokens
LOCAL_IDENTITY = Identity("local", Role.ADMIN, DEFAULT_TENANT)  # in-process, no token given


class TokenFileError(ValueError):
    """A bad line of a token file; the message starts with ``SOURCE:LINE``."""


def token_name(token: str) -> str:
    """A stable, non-secret name for a token (what jobs record as their owner)."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]


class TokenTable:
    """The tokens a service accepts, each with its identity."""

    def __init__(self, identities: Mapping[str, Identity]) -> None:
        if not identities:
            raise ValueError("tokens: at least one token is needed (no tokens: an open service)")
        self._by_token = dict(identities)

    @classmethod
    def parse(cls, lines: list[str], source: str) -> TokenTable:
        """Read ``TOKEN:ROLE[:TENANT]`` lines; TokenFileError names ``source:LINE``."""
        identities: dict[str, Identity] = {}
        for number, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{number}"
            parts = line.split(":")
            if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
                raise TokenFileError(f"{where}: expected TOKEN:ROLE[:TENANT], got {line!r}")
            token, role, tenant = (p.strip() for p in [*parts, DEFAULT_TENANT][:3])
            if any(c.isspace() for c in token):
                raise TokenFileError(f"{where}: a token must not contain spaces")
            if role.upper() not in Role.__members__:
                raise TokenFileError(f"{where}: role {role!r} is not one of "
                                     f"{', '.join(r.name.lower() for r in Role)}")
            if token in identities:
                raise TokenFileError(f"{where}: this token is listed twice")
            identities[token] = Identity(token_name(token), Role[role.upper()], tenant)
        if not identities:
            raise TokenFileError(f"{source}: no tokens (an open service needs no token file)")
        return cls(identities)

    def identify(self, token: str | None) -> Identity:
        """The token's identity; UnauthenticatedError for no or an unknown token."""
        if not token:
            raise UnauthenticatedError("no token: send the metadata `authorization: Bearer "
                                       "TOKEN`")
        identity = self._by_token.get(token)
        if identity is None:
            raise UnauthenticatedError("unknown token: this service does not accept it")
        return identity


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer TOKEN`` entry of call metadata, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise UnauthenticatedError("authorization: expected `Bearer TOKEN`")
            return token.strip()
    return None


def authorize(tokens: TokenTable | None, method: str, token: str | None) -> Identity:
    """Who calls ``method`` with ``token``: UnauthenticatedError for no or a wrong token,
    PermissionDeniedError for too low a role (or a method with no role: refused, not open)."""
    needed = METHOD_ROLES.get(method)
    if needed is None:
        raise PermissionDeniedError(f"{method}: not in the service's role table; refused")
    identity = OPEN_IDENTITY if tokens is None else tokens.identify(token)
    if identity.role < needed:
        raise PermissionDeniedError(f"{method} needs a token of role {needed.name.lower()} or "
                                    f"higher; this token ({identity.name}) is "
                                    f"{identity.role.name.lower()}")
    return identity


_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("nas_caller",
                                                                          default=None)


@contextlib.contextmanager
def acting_as(identity: Identity) -> Iterator[None]:
    """Run the enclosed servicer call as ``identity``."""
    reset = _CALLER.set(identity)
    try:
        yield
    finally:
        _CALLER.reset(reset)


def caller() -> Identity:
    """The current call's identity; a call that bypassed authentication is refused."""
    identity = _CALLER.get()
    if identity is None:
        raise UnauthenticatedError("no caller identity: call through SearchClient or the server")
    return identity


def check_visible(job_id: str, tenant: str) -> None:
    """NotFoundError (as for an unknown job) when the caller may not see a job of ``tenant``."""
    if not caller().sees(tenant):
        raise NotFoundError(f"job_id: no job {job_id!r}")


def missing_roles(method_names: list[str]) -> list[str]:
    """The methods of a service that ``METHOD_ROLES`` does not list."""
    return [m for m in method_names if m not in METHOD_ROLES]
