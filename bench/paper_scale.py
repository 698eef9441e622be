"""The paper's scale, measured (``python -m bench.paramserver``'s third part): Zoph & Le's
12,800 trainings with S=20 shards, K=100 replicas and m=8 children per replica, beside K=1 and
K=10 on the same trainings.

Each row is one real ``nas search`` on the synthetic evaluator over Zoph & Le's own space
(``macro``, 6 layers: 33 decisions, about 2.3e15 architectures, so 12,800 trainings exhaust
nothing): a seeded landscape with a planted optimum whose reward and architecture are known,
and each child a sleep of ``--child-seconds`` in place of its training, so the comparison runs
in minutes on two cores while the parameter servers, replicas, pushes and pulls are the real
ones. Learning is read per training: the mean reward of each block of trainings, in the order
they started.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from controller.spaces import create_space
from protos.types import SearchSpaceSpec

SPACE = SearchSpaceSpec(name="macro", num_layers=6)  # Zoph & Le's CNN space, 6 layers
CONTROLLER = "zoph-le"  # the paper's controller: 2x35 LSTM, Adam 6e-4, cubed reward, m=8
# The staleness rules as `nas search` flags. SCALE (the default): every push applied, its step
# times min(1, K / staleness); REJECT (the old rule): pushes more than tau = 4 versions behind
# are dropped
SCALE: tuple[str, ...] = ("--staleness-rule", "scale")
REJECT: tuple[str, ...] = ("--staleness-rule", "reject", "--staleness", "4")
RSS_TARGET_MIB = 4e9 / 2**20  # 4 GB
APPLIED_TARGET = 0.90
SAMPLE_SECONDS = 0.25  # how often the processes' CPU and memory are read


@dataclass(frozen=True)
class Layout:
    """One row: S shards, K replicas of m children each, the search seeds it runs and the
    extra ``nas search`` flags it adds (a staleness rule, replica host processes, ...)."""

    name: str
    shards: int
    replicas: int
    children: int = 8
    seeds: tuple[int, ...] = (0,)
    flags: tuple[str, ...] = ()


def layouts(shards: int, replicas: int, mid_replicas: int, k1_seeds: int,
            reject: bool = True, hosts: int = 0) -> list[Layout]:
    """The rows: the paper's layout first (the one the targets judge), the same in ``hosts``
    replica-host processes, the old rule at the same layout, K=``mid_replicas`` on the same S
    (only K changes), and K=1 over ``k1_seeds`` seeds (its seed-to-seed spread is the noise the
    paper layout's curve is judged against)."""
    rows = [Layout(f"S={shards}, K={replicas}, m=8", shards, replicas, flags=SCALE)]
    if hosts > 1:
        rows.append(Layout(f"S={shards}, K={replicas}, m=8, P={hosts} replica hosts", shards,
                           replicas, flags=(*SCALE, "--replica-hosts", str(hosts))))
    if reject:
        rows.append(Layout(f"S={shards}, K={replicas}, m=8, reject tau=4", shards, replicas,
                           flags=REJECT))
    if mid_replicas:
        rows.append(Layout(f"S={shards}, K={mid_replicas}, m=8", shards, mid_replicas,
                           flags=SCALE))
    rows.append(Layout("S=1, K=1, m=8", 1, 1, seeds=tuple(range(k1_seeds)), flags=SCALE))
    return rows


def search_args(layout: Layout, seed: int, trainings: int, child_seconds: float,
                redis_url: str, out: Path) -> list[str]:
    """The ``nas search`` command line of one run."""
    return [sys.executable, "-m", "nas", "search", "--space", SPACE.name, "--num-layers",
            str(SPACE.num_layers), "--evaluator", "synthetic", "--controller", CONTROLLER,
            "--children", str(layout.children), "--parallel", str(layout.children),
            "--simulate-seconds", str(child_seconds), "--budget", str(trainings),
            "--seed", str(seed), "--shards", str(layout.shards), "--replicas",
            str(layout.replicas), "--redis", redis_url, "--out", str(out), "--quiet",
            *layout.flags]


def run(layout: Layout, seed: int, out: Path, trainings: int, block: int,
        child_seconds: float, redis_url: str) -> dict[str, Any]:
    """One search of ``layout`` on ``redis_url``'s database, emptied before and after (the
    evaluation cache is shared by every job on a Redis: earlier runs' results would be free
    cache hits); what it measured, summarised."""
    db = redis.Redis.from_url(redis_url)
    db.flushdb()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (out / "search.log").open("wb") as log:
        proc = subprocess.Popen(search_args(layout, seed, trainings, child_seconds,
                                            redis_url, out), stdout=log,
                                stderr=subprocess.STDOUT)
        watched = watch(proc, out / "cluster.json")
    wall = time.perf_counter() - start
    db.flushdb()
    if proc.returncode != 0:
        raise RuntimeError(f"{layout.name} seed {seed}: nas search exited "
                           f"{proc.returncode}:\n{(out / 'search.log').read_text()[-3000:]}")
    doc = json.loads((out / "result.json").read_text())
    return {"layout": layout.name, "seed": seed, "shards": layout.shards,
            "replicas": layout.replicas, "children": layout.children,
            "flags": list(layout.flags), "wall": wall, **watched,
            **summarize(doc, block)}


def _read(pid: int) -> tuple[float, float, float] | None:
    """(CPU seconds, resident MiB, peak resident MiB) of a live process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, IndexError):
        return None
    kib = {k: int(v.split()[0]) for k, v in
           (line.split(":", 1) for line in status.splitlines() if line.startswith("VmRSS:") or
            line.startswith("VmHWM:"))}
    ticks = 100.0  # USER_HZ on Linux
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    return cpu, kib.get("VmRSS", 0) / 1024, kib.get("VmHWM", 0) / 1024


def watch(proc: subprocess.Popen[bytes], cluster_file: Path) -> dict[str, Any]:
    """Sample the search process and every process its cluster.json names until it exits:
    each one's CPU seconds and peak RSS (VmHWM) as last read alive, and the peak of their
    summed RSS over the samples."""
    names: dict[str, int] = {"search": proc.pid}
    seen: dict[str, dict[str, float]] = {}
    peak_total = 0.0
    while proc.poll() is None:
        if cluster_file.exists():
            with contextlib.suppress(ValueError, KeyError):  # half written: next time
                names.update(json.loads(cluster_file.read_text())["processes"])
        total = 0.0
        for name, pid in names.items():
            sample = _read(pid)
            if sample is not None:  # an exiting process reads as no memory: keep the max
                total += sample[1]
                last = seen.get(name, {"cpu_s": 0.0, "rss_peak_mib": 0.0})
                seen[name] = {"pid": pid, "cpu_s": max(last["cpu_s"], sample[0]),
                              "rss_peak_mib": max(last["rss_peak_mib"], sample[2])}
        peak_total = max(peak_total, total)
        time.sleep(SAMPLE_SECONDS)
    return {"peak_rss_mib": peak_total, "processes": seen}


def role(name: str) -> str:
    """A process's role: its cluster.json name without the index (``shard17`` -> shard)."""
    return re.sub(r"[-_]?\d+$", "", name) or name


def roles(processes: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per role: how many processes, their peak RSS (max, mean, sum) and CPU seconds."""
    grouped: dict[str, list[dict[str, float]]] = {}
    for name, p in processes.items():
        grouped.setdefault(role(name), []).append(p)
    return {r: {"count": len(ps), "rss_max": max(p["rss_peak_mib"] for p in ps),
                "rss_mean": statistics.fmean(p["rss_peak_mib"] for p in ps),
                "rss_sum": sum(p["rss_peak_mib"] for p in ps),
                "cpu_s": sum(p["cpu_s"] for p in ps)} for r, ps in grouped.items()}


def summarize(doc: dict[str, Any], block: int) -> dict[str, Any]:
    """What a result.json says: the learning curve (mean reward of each full block of
    ``block`` trainings, cache hits left out), the best found and its distance to the
    landscape's optimum, the pushes and their staleness and latencies."""
    rewards = [h["reward"] for h in doc["history"] if not h["cached"]]
    curve = [statistics.fmean(rewards[i:i + block])
             for i in range(0, len(rewards) - block + 1, block)]
    optimum = doc["evaluator"]["optimum"]
    space = create_space(SPACE)
    best_actions = space.encode(space.from_string(doc["best"]["arch"]))
    optimum_actions = space.encode(space.from_string(optimum["arch"]))
    layout = doc["layout"]
    reports = layout["replica_reports"].values()
    return {"trainings": doc["trainings"], "cache_hits": doc["cache_hits"],
            "search_seconds": doc["wall_seconds"], "curve": curve,
            "best": doc["best"]["reward"], "optimum": optimum["reward"],
            "decisions": len(optimum_actions),
            "hamming": sum(a != b for a, b in zip(best_actions, optimum_actions, strict=True)),
            "random_mean": doc["evaluator"]["random_reward"]["mean"],
            "pushes": sum(r["pushes"] for r in reports),
            "rejected_stale": sum(r["rejected_stale"] for r in reports),
            **{k: layout.get(k, {}) for k in ("staleness_versions", "push_ms", "pull_ms")}}


def prediction_band(curves: list[list[float]], level: float = 0.95) -> list[tuple[float, float]]:
    """Per block, the ``level`` prediction interval of one more run's block mean from the
    ``curves`` of independent seeds: mean +- t(n-1) * sd * sqrt(1 + 1/n), sd the sample
    standard deviation over the n >= 2 seeds (the interval for a new draw of a normal
    population whose mean and spread are estimated from n draws)."""
    from scipy import stats

    n = len(curves)
    if n < 2:
        raise ValueError(f"curves: need >= 2 seeds for a spread, got {n}")
    t = float(stats.t.ppf(0.5 + level / 2, n - 1))
    band = []
    for values in zip(*curves, strict=False):
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        half = t * sd * (1 + 1 / n) ** 0.5
        band.append((mean - half, mean + half))
    return band


def outside(curve: list[float], band: list[tuple[float, float]]) -> list[int]:
    """The blocks (1-based) where ``curve`` leaves ``band``."""
    return [b + 1 for b, (v, (lo, hi)) in enumerate(zip(curve, band, strict=False))
            if not lo <= v <= hi]


def calibration(curves: list[list[float]]) -> tuple[int, int]:
    """The test applied to each seed against the others' band (n >= 3): (seeds within
    noise in every block, seeds tested). How often the test flags a run that differs from
    the reference only by its seed."""
    if len(curves) < 3:
        return 0, 0
    passed = sum(not outside(c, prediction_band(curves[:i] + curves[i + 1:]))
                 for i, c in enumerate(curves))
    return passed, len(curves)


RULES = {SCALE: "every push applied, its learning rate times min(1, K / staleness) (the "
                "default rule)",
         REJECT: "a push more than tau = 4 versions behind is rejected: the replica drops its "
                 "gradient and re-pulls"}


def _ms(q: dict[str, float]) -> str:
    return f"{q.get('p50', 0):.0f}/{q.get('p90', 0):.0f}" if q else "-"


def _applied(r: dict[str, Any]) -> str:
    tried = r["pushes"] + r["rejected_stale"]
    share = f" ({r['pushes'] / tried:.0%})" if tried else ""
    return f"{r['pushes']:,} / {r['rejected_stale']:,}{share}"


def runs_table(results: list[dict[str, Any]]) -> list[str]:
    """One row per run: time, the best found and its distance to the optimum, the pushes and
    their staleness and latencies, CPU and memory."""
    lines = ["| layout | flags | seed | wall s | trainings | best reward | optimum - best | "
             "decisions off the optimum | pushes applied / rejected (applied) | staleness "
             "p50/p90/max | push ms p50/p90 | pull ms p50/p90 | CPU s | peak RSS MiB |",
             "|---" * 14 + "|"]
    for r in results:
        st = r["staleness_versions"]
        cpu = sum(p["cpu_s"] for p in r["processes"].values())
        lines.append(
            f"| {r['layout']} | `{' '.join(r['flags'])}` | {r['seed']} | {r['wall']:.0f} | "
            f"{r['trainings']:,} | {r['best']:.4f} | {r['optimum'] - r['best']:.4f} | "
            f"{r['hamming']} of {r['decisions']} | {_applied(r)} | "
            + (f"{st['p50']:.0f}/{st['p90']:.0f}/{st['max']:.0f}" if st else "-")
            + f" | {_ms(r['push_ms'])} | {_ms(r['pull_ms'])} | {cpu:.0f} | "
            f"{r['peak_rss_mib']:,.0f} |")
    return lines


def curve_table(results: list[dict[str, Any]], band: list[tuple[float, float]] | None,
                judged: str) -> list[str]:
    """The learning curves, one row per run (the judged layout's blocks outside K=1's band
    starred), and the band."""
    blocks = max(len(r["curve"]) for r in results)
    lines = ["| run | " + " | ".join(str(b + 1) for b in range(blocks)) + " |",
             "|---" * (blocks + 1) + "|"]
    for r in results:
        out = set(outside(r["curve"], band)) if band and r["layout"] == judged else set()
        cells = [f"{v:.3f}{'*' if b + 1 in out else ''}" for b, v in enumerate(r["curve"])]
        lines.append(f"| {r['layout']}, seed {r['seed']} | " + " | ".join(cells) + " |")
    if band:
        lines.append("| K=1, 95% prediction interval | " +
                     " | ".join(f"{lo:.3f}-{hi:.3f}" for lo, hi in band) + " |")
    return lines


def process_table(results: list[dict[str, Any]]) -> list[str]:
    """Per layout (its first seed) and process role: peak RSS per process and CPU seconds."""
    lines = ["| layout | role | processes | peak RSS MiB per process: max / mean | sum of "
             "peaks MiB | CPU s |", "|---|---|---|---|---|---|"]
    firsts = {r["layout"]: r for r in reversed(results)}
    for r in results:
        if firsts[r["layout"]] is not r:
            continue
        for name, g in roles(r["processes"]).items():
            lines.append(f"| {r['layout']} | {name} | {g['count']} | {g['rss_max']:,.0f} / "
                         f"{g['rss_mean']:,.0f} | {g['rss_sum']:,.0f} | {g['cpu_s']:.0f} |")
    return lines


def reading(results: list[dict[str, Any]]) -> str:
    """The pushes each layout applied and rejected, and what each row's flags mean."""
    counts: dict[str, str] = {}
    for r in results:  # a layout's first seed
        counts.setdefault(r["layout"], _applied(r))
    rules = {tuple(r["flags"]) for r in results}
    said = [f"`{' '.join(f)}`: {RULES[f]}" for f in RULES if f in rules]
    return ("Pushes applied / rejected as stale (the share applied): "
            + "; ".join(f"{name} {c}" for name, c in counts.items())
            + ". Staleness: the updates other replicas applied between a replica's pull and "
              "its applied push, on its worst shard. Flags: " + "; ".join(said) + ".")


def verdicts(results: list[dict[str, Any]], band: list[tuple[float, float]] | None
             ) -> list[str]:
    """The targets, judged on the first row (the paper's layout)."""
    paper = results[0]
    name = paper["layout"]
    tried = paper["pushes"] + paper["rejected_stale"]
    share = paper["pushes"] / tried if tried else 0.0
    rss = paper["peak_rss_mib"]
    lines = ["| target | measured | verdict |", "|---|---|---|",
             f"| pushes applied at {name} >= {APPLIED_TARGET:.0%} | {share:.1%} "
             f"({paper['pushes']:,} of {tried:,}) | "
             f"{'met' if tried and share >= APPLIED_TARGET else 'not met'} |",
             f"| total RSS of {name} <= 4 GB ({RSS_TARGET_MIB:,.0f} MiB) | peak {rss:,.0f} MiB "
             f"summed over its processes | {'met' if rss <= RSS_TARGET_MIB else 'not met'} |"]
    if band is None:
        lines.append(f"| {name}'s learning curve within noise of K=1's | not judged: the "
                     "test needs >= 2 K=1 seeds | - |")
    else:
        off = outside(paper["curve"], band)
        where = f"{len(off)} of {len(band)} blocks outside ({', '.join(map(str, off))})" \
            if off else f"all {len(band)} blocks inside"
        lines.append(f"| {name}'s learning curve within noise of K=1's (every block inside "
                     f"K=1's 95% prediction interval) | {where} | "
                     f"{'not met' if off else 'met'} |")
    return lines


def _first_block(paper: dict[str, Any], block: int) -> str:
    """Why the paper layout's first blocks cannot learn: K x m children start at once."""
    running = paper["replicas"] * paper["children"]
    blocks = running / block
    return (f"{paper['layout']} starts K x m = {running:,} children at once: its first "
            f"{running:,} trainings ({blocks:.1f} block{'s' if blocks != 1 else ''}) are all "
            "proposed by the initial policy, before any push.")


def _test(band: list[tuple[float, float]] | None, passed: int, tested: int) -> str:
    """The within-noise test in words, and how it fares on K=1's own seeds."""
    text = ("Within noise, the test: K=1 runs n independent seeds; for each block the 95% "
            "prediction interval of one more K=1 run's block mean is mean +- t(0.975, n-1) x "
            "sd x sqrt(1 + 1/n) over those seeds (sd the sample standard deviation); the "
            "paper layout's curve is within noise when every block lies inside. The test is "
            f"strict: it asks all {len(band or [])} blocks to pass at once.")
    if tested:
        text += (f" Applied to each K=1 seed against the interval of the other seeds, "
                 f"{passed} of {tested} pass (runs that differ only by their seed).")
    return text


def section(results: list[dict[str, Any]], trainings: int, block: int,
            child_seconds: float, plot_dir: Path) -> list[str]:
    """The markdown subsection of the paper's scale; its learning-curve plot into
    ``plot_dir``."""
    from bench.plots import plot_blocks

    paper, judged = results[0], results[0]["layout"]
    k1 = [r["curve"] for r in results if r["replicas"] == 1]
    band = prediction_band(k1) if len(k1) >= 2 else None
    passed, tested = calibration(k1)
    space = create_space(SPACE)
    seeds: dict[str, list[str]] = {r["layout"]: [] for r in results}
    for r in results:
        seeds[r["layout"]].append(str(r["seed"]))
    png = plot_blocks({f"{r['layout']}, seed {r['seed']}": r["curve"] for r in results},
                      band, block, "paramserver-curve.png",
                      f"Mean reward per {block:,} trainings (synthetic landscape, macro space)",
                      plot_dir)
    lines = [
        "", f"### The paper's scale: {trainings:,} trainings, {judged} beside fewer replicas",
        "", f"Each row is one `nas search --evaluator synthetic --space {SPACE.name} "
        f"--num-layers {SPACE.num_layers} --controller {CONTROLLER} --children 8 --parallel 8 "
        f"--simulate-seconds {child_seconds} --budget {trainings}` with the row's S, K, seed "
        f"and flags: Zoph & Le's space ({len(space.decisions)} decisions, {space.size:.1e} "
        f"architectures) and controller (2x35 LSTM, Adam 6e-4, cubed reward); a seeded "
        f"landscape (seed 0) whose planted optimum scores {paper['optimum']:.4f} and whose "
        f"random architectures score {paper['random_mean']:.4f} on average; each child a "
        f"sleep of {child_seconds} s in place of its training, the m = 8 children of a replica "
        "at once. The K replicas are threads of the search process, the S shards processes; "
        "all share this machine's cores. Seeds: " + "; ".join(
            f"{name} {', '.join(s)}" for name, s in seeds.items()) + ". CPU and memory: every "
        f"process of a run read from /proc every {SAMPLE_SECONDS} s (peak RSS: the sum's "
        "peak over the samples; per process: its VmHWM); the Redis server is not counted.",
        "", *runs_table(results), "", reading(results), "",
        f"Mean reward per block of {block:,} trainings (the learning curve: block b holds "
        f"trainings {block:,}(b-1)+1 to {block:,}b in the order they started; * outside "
        "K=1's interval):", "", *curve_table(results, band, judged), "",
        _first_block(paper, block), "",
        f"![learning curve](bench/out/{png.name})", "",
        _test(band, passed, tested), "",
        "Processes (each layout's first seed):", "", *process_table(results), "",
        *verdicts(results, band)]
    return lines
