"""The Grafana dashboards: the committed JSON is exactly what nas/deploy/dashboards.py builds with
Grafana's typed builders (no drift, stable uids), and against real services every metric a
panel's PromQL names is exported by a running cluster (`nas serve search` with a shard and a Ray
worker, a REINFORCE job running), and a real Prometheus scraping that cluster answers every
panel's query with data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ports import free_port
from prometheus_client.parser import text_string_to_metric_families

from controller.service.client import SearchClient
from nas.deploy import dashboards
from protos.errors import NotFoundError
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp
from worker.scheduler import RAY_LOOPBACK_ENV

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / dashboards.DASHBOARD_DIR
# Grafana links and bookmarks name a dashboard by uid: renaming one breaks them
UIDS = {"search-overview.json": "nas-search-overview", "system-health.json": "nas-system-health",
        "job-drilldown.json": "nas-job-drilldown"}
START_S = 90.0
# exported only by the GPU nodes' exporters (worker.exporter in each worker container; the
# compose test scrapes them), never by the search service, which has no GPU
GPU_ONLY = {"nas_worker_gpu_utilization_ratio"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan",
                # aggregation operators: their "(" may follow a by/without clause
                "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers used bare or before ``{`` / ``[``,
    less functions (an identifier before ``(``), keywords, label names and values, durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)        # label values, strings
    text = re.sub(r"\{[^}]*\}", "{}", text)                   # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)                  # range durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1",
                  text)                                       # grouping label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        if match.start() and (text[match.start() - 1].isdigit() or text[match.start() - 1]
                              == "."):
            continue  # an exponent or unit inside a number (1e9)
        names.add(match.group())
    return names


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every panel target."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((path.name, panel["title"], target["expr"]))
    return out


def test_the_extractor_finds_metric_names_only() -> None:
    # Arrange
    expr = ('(sum by (service) (rate(nas_rpc_server_handled_total{code!="OK"}[1m])) or '
            'x_total * 0) / histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > 1e3')
    # Act / Assert
    assert promql_metric_names(expr) == {"nas_rpc_server_handled_total", "x_total", "h_bucket"}
    assert promql_metric_names('nas_a{job_id="$job"} / on (job_id) nas_b') == {"nas_a", "nas_b"}


def test_dashboards_are_grafana_importable() -> None:
    files = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert files == ["job-drilldown.json", "search-overview.json", "system-health.json"]
    for name in files:
        doc = json.loads((DASHBOARDS / name).read_text())
        assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
        ids = [p["id"] for p in doc["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        variables = {v["name"] for v in doc["templating"]["list"]}
        for panel in doc["panels"]:
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), (name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["expr"] and target["refId"]
                used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
                assert used <= variables, f"{name}: {panel['title']} uses {used - variables}"
    drill = json.loads((DASHBOARDS / "job-drilldown.json").read_text())
    assert all('job_id="$job"' in t["expr"] for p in drill["panels"] for t in p["targets"])


def test_the_committed_dashboards_are_the_generators_output() -> None:
    # Act
    stale = dashboards.drifted(ROOT)
    # Assert
    assert stale == [], f"{stale} differ: run `python -m nas.deploy.dashboards --write`"
    assert {spec.file for spec in dashboards.DASHBOARDS} == set(UIDS)


def test_dashboard_uids_and_panel_ids_are_stable() -> None:
    # Act
    docs = {name: json.loads((DASHBOARDS / name).read_text()) for name in UIDS}
    # Assert: the uids, and panels numbered 1.. in table order (rows included)
    assert {name: doc["uid"] for name, doc in docs.items()} == UIDS
    for name, doc in docs.items():
        assert [p["id"] for p in doc["panels"]] == list(range(1, len(doc["panels"]) + 1)), name
    assert [p["title"] for p in docs["system-health.json"]["panels"] if p["type"] == "row"] == [
        "RPC (every gRPC server)", "Parameter servers", "Trials and workers", "Processes"]


def test_the_generator_command_names_a_drifted_file_and_rewrites_it(tmp_path: Path) -> None:
    # Arrange: a copy of the dashboards with one panel's query edited by hand
    copy = tmp_path / dashboards.DASHBOARD_DIR
    shutil.copytree(DASHBOARDS, copy)
    edited = copy / "job-drilldown.json"
    edited.write_text(edited.read_text().replace("nas_search_policy_entropy", "nas_entropy"))
    command = [sys.executable, "-m", "nas.deploy.dashboards", "--root", str(tmp_path)]
    # Act
    check = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    write = subprocess.run([*command, "--write"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    # Assert
    assert check.returncode == 1, check.stderr
    assert check.stderr.splitlines() == [
        f"{edited}: differs from nas/deploy/dashboards.py; run "
        f"`python -m nas.deploy.dashboards --write`"]
    assert write.returncode == 0, write.stderr
    assert edited.read_text() == (DASHBOARDS / "job-drilldown.json").read_text()
    assert dashboards.drifted(tmp_path) == []


def test_a_panel_kind_the_builder_lacks_is_an_error_naming_the_panel() -> None:
    # Arrange
    spec = dashboards.Dashboard("x.json", "x", "X", "x", (dashboards.Panel(
        "Pie", "a pie", (("up", "up"),), kind="piechart"),))
    # Act / Assert
    with pytest.raises(ValueError, match="kind: 'piechart' of panel 'Pie'"):
        dashboards.build(spec)


@dataclass
class MetricsCluster:
    """A running search service: its gRPC endpoint and every /metrics URL it printed."""

    search: str
    metrics_urls: list[str]
    log: Path


def _ray_env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("{}\n")
    return {**os.environ, **RAY_LOOPBACK_ENV, "HOME": str(home),
            "PYTHONPATH": str(ROOT)}


@contextmanager
def start_cluster(tmp: Path) -> Iterator[MetricsCluster]:
    """`nas up` (what the issue's end-to-end tests start): 1 shard, 1 Ray worker slot, a private
    Redis; its printed search endpoint and metrics URLs, until the block ends (`nas down`)."""
    log = tmp / "up.log"
    run = tmp / "cluster"
    env = _ray_env(tmp)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nas", "up", "--shards", "1", "--workers", "1",
             "--dir", str(run)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_S
        text = ""
        while "cluster up" not in text:
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"nas up did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
            text = log.read_text(errors="replace")
        search = re.search(r"^export NAS_ENDPOINT=(\S+)$", text, re.MULTILINE)
        assert search is not None, text
        urls = sorted(set(re.findall(r"http://127\.0\.0\.1:\d+/metrics", text)))
        yield MetricsCluster(search.group(1), urls, log)
    finally:
        subprocess.run([sys.executable, "-m", "nas", "down", "--dir", str(run)],
                       cwd=ROOT, env=env, capture_output=True, timeout=90)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsCluster]:
    with start_cluster(tmp_path_factory.mktemp("metrics-cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def running_job(cluster: MetricsCluster, nb201_csv: Path) -> Iterator[str]:
    """A REINFORCE job on the shard that keeps RUNNING, and training new cells, through the
    module (a latency objective makes each new NB201 cell cost a measured build: ~10/s; Zoph &
    Le's slow learning rate keeps it exploring, where the default preset converges in seconds
    to cache hits only); one GetSearch of a missing job, so the error panels have an error."""
    spec = sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="reinforce",
                         controller=sp.ControllerSpec(preset="zoph-le", children=2),
                         evaluation=sp.EvaluationSpec(evaluator="nb201", dataset="cifar10"),
                         budget=2000, seed=11,
                         objectives=[sp.Objective(metric="latency_ms", target=50.0)])
    with SearchClient(cluster.search) as client:
        job_id = client.submit(spec)
        with pytest.raises(NotFoundError):
            client.get("job-000000000000")
        deadline = time.monotonic() + 60
        while client.get(job_id).trainings < 5:
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.2)
        yield job_id
        client.cancel(job_id)


def scrape(url: str) -> set[str]:
    """The sample names a /metrics endpoint serves now."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_dashboard_metric_is_exported_by_the_running_services(
        cluster: MetricsCluster, running_job: str) -> None:
    # Arrange
    assert len(cluster.metrics_urls) == 2, cluster.log.read_text()  # the service, its shard
    # Act
    exported = set().union(*(scrape(url) for url in cluster.metrics_urls))
    named = {name: (board, title) for board, title, expr in panel_queries()
             for name in promql_metric_names(expr)}
    # Assert
    missing = {n: where for n, where in named.items()
               if n not in exported and n not in GPU_ONLY}
    assert not missing, f"dashboard metrics no service exports: {missing}"
    assert not (GPU_ONLY & exported)  # the worker nodes' exporters export them
    assert len(named) >= 30


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def prometheus(tmp: Path, targets: list[str]) -> Iterator[str]:
    """Debian's prometheus scraping ``targets`` (host:port) every second; its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not on PATH: apt-get install prometheus (.ci/run does)"
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "nas", "static_configs": [{"targets": targets}]}]}))
    port = free_port()
    with (tmp / "prometheus.log").open("wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp / "prometheus.log").read_text()[-3000:]
            try:
                _get(f"{base}/api/v1/status/buildinfo")
                break
            except OSError:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def _query(base: str, expr: str) -> list[Any]:
    answer = _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def test_a_real_prometheus_answers_every_panel_query(
        cluster: MetricsCluster, running_job: str, tmp_path: Path) -> None:
    # Arrange: Prometheus scraping every endpoint until each has been scraped 4 times
    targets = [urllib.parse.urlparse(u).netloc for u in cluster.metrics_urls]
    queries = [(f"{board}: {title}: {expr}", expr.replace("$job", running_job),
                bool(promql_metric_names(expr) & GPU_ONLY)) for board, title, expr in
               panel_queries()]
    with prometheus(tmp_path, targets) as base:
        deadline = time.monotonic() + 30
        while True:
            counts = _query(base, "count_over_time(up[1m])")
            ups = _query(base, "up == 1")
            if len(ups) == len(targets) and all(int(c["value"][1]) >= 4 for c in counts):
                break
            assert time.monotonic() < deadline, f"targets down: {_get(base + '/api/v1/targets')}"
            time.sleep(0.5)
        # Act: every panel's query (the drill-down's $job: the running job); a panel without
        # data is asked again for a few seconds (a rate over a moment the job was idle)
        deadline = time.monotonic() + 15
        while True:
            empty = []
            for where, expr, gpu_only in queries:
                result = _query(base, expr)
                if gpu_only:
                    assert result == [], f"{where}: the search service exported GPU metrics"
                elif all(r["value"][1] == "NaN" for r in result):  # nothing a panel draws
                    empty.append(where)
            if not empty or time.monotonic() > deadline:
                break
            queries = [q for q in queries if q[0] in empty]
            time.sleep(1.0)
    # Assert
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert len(panel_queries()) >= 30
