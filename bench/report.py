"""Writing benchmark sections into BENCHMARKS.md: each script owns one marked section."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery section is written by a script in `bench/`; its command is given.\n"


def _cpu_busy(window: float = 0.5) -> float | None:
    """The share of all cores busy (not idle or iowait) over ``window`` seconds (Linux)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


_START_BUSY = _cpu_busy()  # at import: before the benchmark's own processes ran


def background_load() -> str:
    """What else ran on the machine when this benchmark started: the share of its cores busy
    over half a second (absolute times and rates are noisy when other work competed)."""
    if _START_BUSY is None:
        return "other load unknown"
    cores = os.cpu_count() or 1
    word = "quiet" if _START_BUSY < 0.25 else "other work was running, so times are noisy"
    return f"{100 * _START_BUSY:.0f}% of its {cores} cores busy when it started ({word})"


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, no GPU"


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` markers."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text if text.endswith("\n") else text + "\n")
