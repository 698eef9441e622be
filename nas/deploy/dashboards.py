"""The Grafana dashboards as code: a table of panels per dashboard, built with Grafana Labs'
typed builders (``grafana-foundation-sdk``, a dev dependency: no service imports this module)
into the committed JSON files Grafana's file provider loads (``deploy/grafana/provisioning/
dashboards/nas.yml``). ``python -m nas.deploy.dashboards`` names the files that differ (exit 1);
``--write`` rewrites them. ``tests/test_dashboards.py`` fails on drift."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, gauge, heatmap, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as board
from grafana_foundation_sdk.builders import prometheus as promql
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prom_model

DASHBOARD_DIR = "deploy/grafana/dashboards"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
Query = tuple[str, str]  # (PromQL, legend)


@dataclass(frozen=True)
class Panel:
    """One panel: ``kind`` is timeseries, heatmap, stat, gauge or bargauge; ``unit`` a Grafana
    unit id ("" for none); ``width`` of 24 columns, ``height`` in grid rows."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "none"
    kind: str = "timeseries"
    width: int = 8
    height: int = 8


@dataclass(frozen=True)
class Row:
    """A row header; the panels after it, up to the next row, are its panels."""

    title: str


@dataclass(frozen=True)
class Dashboard:
    """One dashboard file; ``job_variable`` adds the ``$job`` picker (running jobs)."""

    file: str
    uid: str
    title: str
    description: str
    items: tuple[Panel | Row, ...]
    job_variable: bool = False


def _q(expr: str, legend: str) -> tuple[Query, ...]:  # a panel of one query
    return ((expr, legend),)


def _quantile(q: float, histogram: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({histogram}_bucket[1m])))"


RATE = "sum(rate({}[1m]))"
SEARCH_OVERVIEW = Dashboard(
    "search-overview.json", "nas-search-overview", "NAS: search overview",
    "Is each search learning? Best reward, rewards, cache hits, throughput and the policy's "
    "entropy and baseline of every running job.", (
        Panel("Best reward per running job", "Best reward so far of each RUNNING job (job "
              "store).", _q("nas_search_job_best_reward", "{{job_id}}"), "percentunit",
              width=12),
        Panel("Reward distribution", "Rewards of succeeded proposals per second, by bucket "
              "(every job).", _q("sum by (le) (rate(nas_search_reward_bucket[1m]))", "{{le}}"),
              "percentunit", "heatmap", width=12),
        Panel("Reward median and p90", "Quantiles of the rewards of the last minute (every "
              "job).", ((_quantile(0.5, "nas_search_reward"), "p50"),
                        (_quantile(0.9, "nas_search_reward"), "p90")), "percentunit", width=12),
        Panel("Cache-hit rate", "Share of proposals answered by the evaluation cache (free): "
              "duplicates and isomorphic twins. High = the policy is converging.",
              _q(f"{RATE.format('nas_search_cache_hits_total')} / "
                 f"{RATE.format('nas_search_proposals_total')}", "hit rate"), "percentunit",
              width=12),
        Panel("Trainings and proposals per second", "Children trained (budget spent) and "
              "architectures proposed, per second, every job.",
              ((RATE.format("nas_search_trainings_total"), "trainings/s"),
               (RATE.format("nas_search_proposals_total"), "proposals/s")), "ops", width=12),
        Panel("Policy entropy", "Entropy of the REINFORCE policy after its last update; "
              "falling = the policy is committing to architectures.",
              _q("nas_search_policy_entropy", "{{job_id}}"), width=12),
        Panel("Baseline and mean reward", "REINFORCE baseline (EMA of rewards) and the mean "
              "reward of the last update's children; reward above baseline = positive "
              "advantage.", (("nas_search_policy_baseline", "baseline {{job_id}}"),
                             ("nas_search_policy_mean_reward", "mean reward {{job_id}}")),
              "percentunit", width=12),
        Panel("Budget spent", "Trainings over budget of each running job.",
              _q("nas_search_job_trainings_total / nas_search_job_budget", "{{job_id}}"),
              "percentunit", "bargauge", width=12),
        Panel("Jobs by state", "Jobs in the store, by state.",
              _q("sum by (state) (nas_search_jobs)", "{{state}}"), "", "stat", 24, 5)))

ERRORS = 'sum by (service) (rate(nas_rpc_server_handled_total{code!="OK"}[1m]))'
CALLS = "sum by (service) (rate(nas_rpc_server_handled_total[1m]))"
SYSTEM_HEALTH = Dashboard(
    "system-health.json", "nas-system-health", "NAS: system health",
    "Is the cluster healthy? RPC latency and errors of every gRPC server, parameter servers, "
    "trials, workers and processes.", (
        Row("RPC (every gRPC server)"),
        Panel("RPC latency p50 by service", "Median time from a call's start to its last "
              "response (streams and long polls included).",
              _q(_quantile(0.5, "nas_rpc_server_handling_seconds", "service, le"),
                 "{{service}}"), "s"),
        Panel("RPC latency p99 by service", "99th percentile of the handling time.",
              _q(_quantile(0.99, "nas_rpc_server_handling_seconds", "service, le"),
                 "{{service}}"), "s"),
        Panel("RPC error rate by service", "Share of calls ending with a status other than OK "
              "(NOT_FOUND, UNAUTHENTICATED, ... included); 0 when none failed.",
              _q(f"({ERRORS} or {CALLS} * 0) / {CALLS}", "{{service}}"), "percentunit"),
        Panel("Calls per second by service and code", "Completed calls, by final status code.",
              _q("sum by (service, code) (rate(nas_rpc_server_handled_total[1m]))",
                 "{{service}} {{code}}"), "reqps", width=24),
        Row("Parameter servers"),
        Panel("Pushes per second by shard", "Gradient pushes accepted, and pushes rejected "
              "(stale, invalid), per shard.",
              (("sum by (shard) (rate(nas_ps_pushes_total[1m]))", "accepted shard {{shard}}"),
               ("sum by (shard, reason) (rate(nas_ps_push_rejected_total[1m]))",
                "rejected {{reason}} shard {{shard}}")), "ops"),
        Panel("Staleness p90", "Versions between an accepted async push's base version and the "
              "shard's (shards) and updates by others between a replica's pull and push "
              "(replicas).", ((_quantile(0.9, "nas_ps_staleness_versions"), "shards"),
                              (_quantile(0.9, "nas_replica_staleness_versions"), "replicas"))),
        Panel("Version by shard", "Updates applied (the latest version of any layout).",
              _q("max by (shard) (nas_ps_version)", "shard {{shard}}")),
        Panel("Replica push and pull latency p99", "As the replicas see it, all shards "
              "together.", ((_quantile(0.99, "nas_replica_push_seconds"), "push"),
                            (_quantile(0.99, "nas_replica_pull_seconds"), "pull")), "s",
              width=24),
        Row("Trials and workers"),
        Panel("Trials running and queued", "Trials of running jobs handed out and not "
              "finished, and the Ray workers' board: leased and waiting for a worker.",
              (("sum(nas_search_trials_running)", "running (jobs)"),
               ("sum(nas_trials_running)", "running (workers)"),
               ("sum(nas_trials_queued)", "queued (workers)"))),
        Panel("Retries per minute", "Attempts retried because their worker died (lost) or "
              "went silent (timeout).",
              _q("sum by (reason) (rate(nas_trial_retries_total[1m])) * 60", "{{reason}}")),
        Panel("Trial duration p50 / p90", "Training time of a child, start to result.",
              ((_quantile(0.5, "nas_search_trial_duration_seconds"), "p50"),
               (_quantile(0.9, "nas_search_trial_duration_seconds"), "p90")), "s"),
        Panel("Trials finished per second by status", "Every job's proposals, by status.",
              _q("sum by (status) (rate(nas_search_trials_total[1m]))", "{{status}}"), "ops"),
        Panel("Workers busy", "Children training now, and the slots the worker services "
              "have.", (("sum(nas_worker_slots_busy)", "busy"),
                        ("sum(nas_worker_slots)", "slots"))),
        Panel("GPU utilisation", "Each GPU of each worker machine (NVML). Absent without "
              "GPUs.", _q("nas_worker_gpu_utilization_ratio", "{{instance}} gpu {{gpu}}"),
              "percentunit"),
        Row("Processes"),
        Panel("CPU by process", "CPU seconds per second of each service process.",
              _q("rate(process_cpu_seconds_total[1m])", "{{instance}}"), "percentunit",
              width=12),
        Panel("Memory by process", "Resident memory of each service process.",
              _q("process_resident_memory_bytes", "{{instance}}"), "bytes", width=12)))

JOB = '{job_id="$job"}'
JOB_DRILLDOWN = Dashboard(
    "job-drilldown.json", "nas-job-drilldown", "NAS: job drill-down",
    "One running job: its rewards, best, policy entropy and trials.", (
        Panel("Best reward", "Best reward so far.", _q(f"nas_search_job_best_reward{JOB}",
                                                      "best"), "percentunit"),
        Panel("Reward: last update and baseline", "Mean reward of the children of the "
              "policy's last update, and the REINFORCE baseline.",
              ((f"nas_search_policy_mean_reward{JOB}", "mean reward"),
               (f"nas_search_policy_baseline{JOB}", "baseline")), "percentunit"),
        Panel("Policy entropy", "Falling = committing to architectures.",
              _q(f"nas_search_policy_entropy{JOB}", "entropy")),
        Panel("Trials by status", "The job's trials: running, succeeded, failed.",
              _q(f"nas_search_job_trials{JOB}", "{{status}}")),
        Panel("Trainings and cache hits per second", "The job's budget spending and free hits.",
              ((f"rate(nas_search_job_trainings_total{JOB}[1m])", "trainings/s"),
               (f"rate(nas_search_job_cache_hits_total{JOB}[1m])", "cache hits/s")), "ops"),
        Panel("Budget spent", "Trainings over budget.",
              _q(f"nas_search_job_trainings_total{JOB} / nas_search_job_budget{JOB}", "spent"),
              "percentunit", "gauge"),
        Panel("Policy updates", "The policy's version: updates applied.",
              _q(f"nas_search_policy_version{JOB}", "version"), width=24)),
    job_variable=True)

DASHBOARDS = (SEARCH_OVERVIEW, SYSTEM_HEALTH, JOB_DRILLDOWN)
PanelBuilder = timeseries.Panel | heatmap.Panel | stat.Panel | gauge.Panel | bargauge.Panel
KINDS: dict[str, Callable[[], PanelBuilder]] = {
    "timeseries": timeseries.Panel, "heatmap": heatmap.Panel, "stat": stat.Panel,
    "gauge": gauge.Panel, "bargauge": bargauge.Panel}


def _target(expr: str, legend: str, ref_id: str, kind: str) -> promql.Dataquery:
    target = (promql.Dataquery().ref_id(ref_id).datasource(DATASOURCE).expr(expr)
              .legend_format(legend))
    return target.format(prom_model.PromQueryFormat.HEATMAP) if kind == "heatmap" else target


def _panel(spec: Panel, panel_id: int) -> PanelBuilder:
    """One panel of the table: its kind's builder, queries, unit and size. A heatmap's unit is
    its y axis (buckets come from Prometheus, not calculated); a share shown as a gauge spans
    0 to 1."""
    if spec.kind not in KINDS:
        raise ValueError(f"kind: {spec.kind!r} of panel {spec.title!r} is not one of "
                         f"{sorted(KINDS)}")
    if not spec.queries:
        raise ValueError(f"queries: panel {spec.title!r} has none")
    panel = (KINDS[spec.kind]().id(panel_id).title(spec.title).description(spec.description)
             .datasource(DATASOURCE).span(spec.width).height(spec.height))
    for number, (expr, legend) in enumerate(spec.queries):
        panel.with_target(_target(expr, legend, chr(ord("A") + number), spec.kind))
    if isinstance(panel, heatmap.Panel):
        return panel.calculate(False).y_axis(heatmap.YAxisConfig().unit(spec.unit))
    if spec.unit:
        panel.unit(spec.unit)
    if spec.unit == "percentunit" and isinstance(panel, gauge.Panel | bargauge.Panel):
        panel.min(0).max(1)
    return panel


def _variables(spec: Dashboard) -> list[Builder[model.VariableModel]]:
    """``$datasource`` (default: the data source named Prometheus) and, on a job dashboard,
    ``$job``: the job ids Prometheus has a best reward of."""
    out: list[Builder[model.VariableModel]] = [
        board.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        .hide(model.VariableHide.DONT_HIDE)
        .current(model.VariableOption(text="Prometheus", value="Prometheus"))]
    if spec.job_variable:
        jobs = "label_values(nas_search_job_best_reward, job_id)"
        out.append(board.QueryVariable("job").label("job").hide(model.VariableHide.DONT_HIDE)
                   .datasource(DATASOURCE).query({"query": jobs, "refId": "job"})
                   .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                   .sort(model.VariableSort.ALPHABETICAL_ASC).multi(False).include_all(False))
    return out


def build(spec: Dashboard) -> model.Dashboard:
    """The dashboard of ``spec``: panels numbered 1.. in table order (rows included), laid out
    left to right by the SDK in rows of 24 columns."""
    titles = [item.title for item in spec.items]
    if len(titles) != len(set(titles)):
        raise ValueError(f"items: {spec.file} repeats a title")
    out = (board.Dashboard(spec.title).uid(spec.uid).description(spec.description)
           .tags(["nas"]).editable().tooltip(model.DashboardCursorSync.CROSSHAIR)
           .time("now-1h", "now").refresh("10s").timezone("").version(1).annotations([])
           .variables(_variables(spec)))
    for panel_id, item in enumerate(spec.items, start=1):
        if isinstance(item, Row):
            out.with_row(board.Row(item.title).id(panel_id))
        else:
            out.with_panel(_panel(item, panel_id))
    return out.build()


def render(spec: Dashboard) -> str:
    """The JSON file of ``spec``, as committed."""
    return json.dumps(build(spec), cls=JSONEncoder, indent=2) + "\n"


def drifted(root: Path) -> list[Path]:
    """The dashboard files under ``root`` (the repository) that differ from the tables."""
    paths = [(root / DASHBOARD_DIR / spec.file, render(spec)) for spec in DASHBOARDS]
    return [path for path, text in paths if not path.is_file() or path.read_text() != text]


def write(root: Path) -> list[Path]:
    """Write every dashboard under ``root``; the paths written."""
    (root / DASHBOARD_DIR).mkdir(parents=True, exist_ok=True)
    for spec in DASHBOARDS:
        (root / DASHBOARD_DIR / spec.file).write_text(render(spec))
    return [root / DASHBOARD_DIR / spec.file for spec in DASHBOARDS]


def main(argv: list[str] | None = None) -> int:
    """Check (exit 1 naming what drifted) or, with ``--write``, regenerate the files."""
    parser = argparse.ArgumentParser(
        prog="python -m nas.deploy.dashboards",
        description=f"Generate the Grafana dashboards ({DASHBOARD_DIR}/*.json) from "
                    "nas/deploy/dashboards.py; without --write, fail if a file differs.")
    parser.add_argument("--write", action="store_true", help="write the files")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root (.)")
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.root):
            print(f"wrote {path}")
        return 0
    stale = drifted(args.root)
    for path in stale:
        print(f"{path}: differs from nas/deploy/dashboards.py; run "
              f"`python -m nas.deploy.dashboards --write`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
