"""Tenants sharing one search service: training budgets, and fair job slots.

A budget file has one ``TENANT:TRAININGS`` per line (``#`` comments and blank lines allowed;
``*`` sets the limit of every tenant not listed; a tenant with no limit is unlimited). A submit
is admitted when its ``spec.budget`` fits in what remains: the limit, minus the budgets of the
tenant's jobs that have not ended (they may still spend all of it), minus the trainings its
ended jobs actually used. Admission is serialised in this process, so two submits cannot both
take the last of a budget.

``FairSlots`` hands the runner's ``max_running`` job slots out fairly: when a slot frees, the
waiting job of the tenant with the fewest running jobs starts first (ties: the oldest job).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from controller.jobs.store import JobStore
from protos.errors import ResourceExhaustedError

ANY_TENANT = "*"


class BudgetFileError(ValueError):
    """A bad line of a budget file; the message starts with ``SOURCE:LINE``."""


class TenantBudgets:
    """Training limits per tenant (an empty table: no limits)."""

    def __init__(self, limits: Mapping[str, int] | None = None) -> None:
        self.limits = dict(limits or {})
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, lines: list[str], source: str) -> TenantBudgets:
        """Read ``TENANT:TRAININGS`` lines; BudgetFileError names ``source:LINE``."""
        limits: dict[str, int] = {}
        for number, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            tenant, sep, amount = (p.strip() for p in line.rpartition(":"))
            if not sep or not tenant or not amount.isdigit():
                raise BudgetFileError(f"{source}:{number}: expected TENANT:TRAININGS (a whole "
                                      f"number >= 0), got {line!r}")
            if tenant in limits:
                raise BudgetFileError(f"{source}:{number}: tenant {tenant!r} is listed twice")
            limits[tenant] = int(amount)
        return cls(limits)

    def limit(self, tenant: str) -> int | None:
        """The tenant's limit in trainings (None: unlimited)."""
        return self.limits.get(tenant, self.limits.get(ANY_TENANT))

    @contextlib.contextmanager
    def admit(self, store: JobStore, tenant: str, budget: int) -> Iterator[None]:
        """Hold admission while the enclosed code records the job; ResourceExhaustedError naming
        ``spec.budget`` when it does not fit the tenant's remaining budget."""
        with self._lock:
            limit = self.limit(tenant)
            if limit is not None:
                reserved, used = store.tenant_usage(tenant)
                remaining = limit - reserved - used
                if budget > remaining:
                    raise ResourceExhaustedError(
                        f"spec.budget: {budget} trainings exceed tenant {tenant!r}'s remaining "
                        f"budget of {max(remaining, 0)} (limit {limit}, {reserved} reserved by "
                        f"unfinished jobs, {used} used by ended jobs)")
            yield


@dataclass(frozen=True)
class _Waiter:
    tenant: str
    created_at: float
    order: int


class FairSlots:
    """``size`` job slots; the waiting job of the tenant with the fewest running jobs goes
    first (ties: the oldest ``created_at``, then the first to wait)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"max_running: must be >= 1, got {size}")
        self.size = size
        self._cond = threading.Condition()
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, _Waiter] = {}
        self._order = itertools.count()

    def _next(self) -> str | None:
        if not self._waiting or sum(self._running.values()) >= self.size:
            return None
        return min(self._waiting, key=lambda j: (self._running[self._waiting[j].tenant],
                                                 self._waiting[j].created_at,
                                                 self._waiting[j].order))

    @contextlib.contextmanager
    def hold(self, job_id: str, tenant: str, created_at: float) -> Iterator[None]:
        """Wait for this job's turn, hold a slot while the enclosed code runs."""
        with self._cond:
            self._waiting[job_id] = _Waiter(tenant, created_at, next(self._order))
            self._cond.wait_for(lambda: self._next() == job_id)
            del self._waiting[job_id]
            self._running[tenant] += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._running[tenant] -= 1
                self._cond.notify_all()

    def waiting(self) -> int:
        """Jobs waiting for a slot."""
        with self._cond:
            return len(self._waiting)

    def running(self, tenant: str) -> int:
        """Slots the tenant's jobs hold."""
        with self._cond:
            return self._running[tenant]
