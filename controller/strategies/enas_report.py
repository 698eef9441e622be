"""result.json's ``enas`` section and its summary lines, read back from the job's journal.

The runner journals each shared-weight epoch as a ``policy`` note and, when the supernet phase
ends, the whole phase (epochs, derived ranking, search cost) as a ``supernet`` note.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def supernet_report(journal: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last ``supernet`` note's data (None when the job ran no supernet phase)."""
    found = None
    for entry in journal:
        if entry.get("op") == "note" and entry.get("kind") == "supernet":
            found = dict(entry.get("data", {}))
    return found


def enas_lines(report: Mapping[str, Any]) -> list[str]:
    """Lines for the terminal: each epoch, the derived ranking's head, and the cost."""
    lines = []
    for e in report.get("epochs", []):
        lines.append(f"  enas epoch {int(e['enas_epoch'])}/{int(e['enas_epochs'])}: shared "
                     f"loss {e['shared_loss']:.3f}, train acc {e['shared_accuracy']:.3f}, "
                     f"controller reward {e['controller_reward']:.3f} "
                     f"({e['epoch_seconds']:.0f} s)")
    derived = report.get("derived", [])
    if derived:
        lines.append(f"  derived {len(derived)} distinct children; best shared-weight score "
                     f"{derived[0]['score']:.4f}: {derived[0]['arch']}")
    unit = "cpu_hours" if "cpu_hours" in report else "gpu_hours"
    devices = f"{report.get('threads', 1)} CPU threads" if unit == "cpu_hours" else "1 GPU"
    lines.append(f"  search cost: {report.get('search_seconds', 0):.0f} s on {devices} = "
                 f"{report.get(unit, 0):.4f} {unit.replace('_', '-')}"
                 + (" (stopped early)" if report.get("stopped") else ""))
    return lines
