"""A search's budget of child trainings: a job's is shared by its replicas and its parallel
children."""

from __future__ import annotations

import threading
from collections.abc import Callable


class BudgetLedger:
    """Trainings claimed against ``budget``: ``claim`` before each training (False once the
    budget is spent or the job is stopped), ``refund`` the part of a claimed training that a
    child stopped early did not train. A resumed job starts from what its journal spent."""

    def __init__(self, budget: float, spent: float = 0.0,
                 stopped: Callable[[], bool] = lambda: False) -> None:
        self.budget = budget
        self.claimed = spent
        self._stopped = stopped
        self._lock = threading.Lock()

    def claim(self) -> bool:
        """One more training, if the budget has room for it and the job goes on."""
        with self._lock:
            if self._stopped() or self.claimed + 1 > self.budget + 1e-9:
                return False
            self.claimed += 1
            return True

    def refund(self, unused: float) -> None:
        """Give back the untrained part of a claimed training: the rest buys more children."""
        with self._lock:
            self.claimed -= unused
