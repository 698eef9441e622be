"""Writing benchmark sections into BENCHMARKS.md: each script owns one marked section.

What a section says about its machine is measured here too: the cores and CPU, the GPUs that
torch can see, the load that other work put on the machine when the benchmark started and
while it ran.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
README = ROOT / "README.md"
HEADER = "# Benchmarks\n\nEvery section is written by a script in `bench/`; its command is given.\n"
BUSY = 0.25  # a share of the cores that other work used above which times are noisy


def _cpu_times() -> tuple[int, int]:
    """(all, busy) clock ticks of all cores since boot (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), sum(fields) - fields[3] - fields[4]  # idle, iowait


def _cpu_busy(window: float = 0.5) -> float | None:
    """The share of all cores busy (not idle or iowait) over ``window`` seconds (Linux)."""
    try:
        total0, busy0 = _cpu_times()
        time.sleep(window)
        total1, busy1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1)


def _own_cpu_seconds() -> float:
    """CPU seconds used by this process and its children that it has waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _snapshot() -> tuple[int, int, float] | None:
    try:
        total, busy = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return total, busy, _own_cpu_seconds()


_START_BUSY = _cpu_busy()  # at import: before the benchmark's own processes ran
_START = _snapshot()


def background_load() -> str:
    """What else ran on the machine when this benchmark started: the share of its cores busy
    over half a second (absolute times and rates are noisy when other work competed)."""
    if _START_BUSY is None:
        return "other load unknown"
    cores = os.cpu_count() or 1
    word = "quiet" if _START_BUSY < BUSY else "other work was running, so times are noisy"
    return f"{100 * _START_BUSY:.0f}% of its {cores} cores busy when it started ({word})"


def others_share() -> float | None:
    """The share of all cores that other processes used since this module was imported: every
    core's busy time (/proc/stat) less this process's and its waited-for children's CPU time.
    None where it cannot be measured (not Linux, or too short a run)."""
    now = _snapshot()
    if _START is None or now is None:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = (now[0] - _START[0]) / ticks
    if total <= 0:
        return None
    others = (now[1] - _START[1]) / ticks - (now[2] - _START[2])
    return min(max(others / total, 0.0), 1.0)


def load_during_run() -> str:
    """The other processes' share of the cores over the run so far, in words: the machine is
    called shared only when that share reached ``BUSY``."""
    share = others_share()
    if share is None:
        return "other processes' load during the run unknown"
    word = ("shared with other work, so every time here is an upper bound" if share >= BUSY
            else "not shared")
    return f"other processes used {100 * share:.0f}% of its cores during the run ({word})"


def gpus() -> str:
    """The GPUs torch can use here, by name ("no GPU" where there are none). Asked of NVML and
    nvidia-smi, not of a CUDA context: a benchmark may still fork workers after this."""
    try:
        import torch
    except ImportError:
        return "no GPU"
    if not torch.cuda.is_available():
        return "no GPU"
    count = torch.cuda.device_count()
    names: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True)
            names = [n.strip() for n in out.stdout.splitlines() if n.strip()]
        except (OSError, subprocess.SubprocessError):
            names = []
    if not names:
        return f"{count} CUDA GPU{'s' if count != 1 else ''}"
    counted = {n: names.count(n) for n in dict.fromkeys(names)}
    return ", ".join(f"{c} x {n}" if c > 1 else n for n, c in counted.items())


def machine(gpu: bool = True) -> str:
    """A one-line description of this machine (with its GPUs unless ``gpu`` is False)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    host = f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"
    return f"{host}, {gpus()}" if gpu else host


def write_section(name: str, body: str, path: Path = BENCHMARKS,
                  readme: Path | None = None) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` markers, then refresh
    the README's generated benchmarks block (``readme``; the repository's README when
    ``path`` is the repository's BENCHMARKS.md)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text if text.endswith("\n") else text + "\n")
    if readme is None and path.resolve() == BENCHMARKS.resolve():
        readme = README
    if readme is not None and readme.exists():
        from bench.readme import refresh

        refresh(path, readme)
