"""WatchSearch and ExportBest, and `nas watch` / `nas export JOB`: each client test runs against
the in-process servicer and a real server on a free loopback port, with real searches on the
NB201 table (and one tiny real training), the in-memory and the Redis job stores."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import torch

from controller.jobs.redis_store import RedisJobStore
from controller.jobs.store import InMemoryJobStore, JobStore
from controller.service.client import SearchClient
from controller.service.events import watch_events
from controller.service.export import CHUNK_BYTES, export_chunks, extract_archive
from controller.service.servicer import SearchServicer, serve_search
from controller.spaces import create_space
from nas.bundle import BundleError, load_bundle
from nas.cli import main as nas
from nas.cluster import job_runner
from nas.serve_command import spec_from_file
from nas.watch_command import Board, Screen
from nas.wiring import PARTS
from protos.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from protos.types import SearchSpaceSpec
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp
from worker.builders import ModelSpec, build_model

WAIT_S = 120.0
REDIS_URL = "redis://127.0.0.1:6379/10"  # this suite's DB; only its own prefix is deleted


def nb201_spec(budget: int = 20, seed: int = 0) -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="reinforce",
                         evaluation=sp.EvaluationSpec(evaluator="nb201"), budget=budget,
                         seed=seed)


@dataclass
class Service:
    client: SearchClient
    store: JobStore
    address: str  # "" in-process
    work_dir: Path


@pytest.fixture(autouse=True)
def _nb201_table(nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))


@pytest.fixture(params=["in-process", "server"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    store: JobStore = InMemoryJobStore()
    runner = job_runner(store, tmp_path / "work", max_running=1)
    if request.param == "in-process":
        with SearchClient(SearchServicer(store, runner)) as local:
            yield Service(local, store, "", runner.work_dir)
        runner.close()
        return
    running = serve_search(store, runner)
    try:
        with SearchClient(running.address) as remote:
            yield Service(remote, store, running.address, tmp_path / "work")
    finally:
        running.stop()


def _kinds(events: list[sp.SearchEvent], kind: str) -> list[sp.SearchEvent]:
    return [e for e in events if e.WhichOneof("kind") == kind]


def test_a_watch_sees_every_trial_once_rising_bests_policy_updates_and_the_end(
        service: Service) -> None:
    # Act
    job_id = service.client.submit(nb201_spec(budget=20))
    events = list(service.client.watch(job_id))
    # Assert
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    states = [e.state.state for e in _kinds(events, "state")]
    assert states == [sp.JOB_STATE_PENDING, sp.JOB_STATE_RUNNING, sp.JOB_STATE_SUCCEEDED]
    assert events[-1].WhichOneof("kind") == "state"
    started = [e.trial_started.trial_id for e in _kinds(events, "trial_started")]
    finished = [e.trial_finished.trial for e in _kinds(events, "trial_finished")]
    trials = list(service.client.trials(job_id))
    assert started == [t.trial_id for t in finished] == [t.trial_id for t in trials]
    assert len(set(started)) == len(started) >= 20
    assert sum(1 for t in finished if not t.cached) == 20
    assert all(t.status == "succeeded" and 0 < t.reward <= 1 for t in finished)
    order = {e.trial_started.trial_id: e.seq for e in _kinds(events, "trial_started")}
    assert all(order[e.trial_finished.trial.trial_id] < e.seq
               for e in _kinds(events, "trial_finished"))
    bests = [e.new_best.reward for e in _kinds(events, "new_best")]
    assert bests == sorted(set(bests)) and bests[0] == finished[0].reward
    assert bests[-1] == service.client.get(job_id).best_reward
    policy = [e.policy for e in _kinds(events, "policy")]
    assert [p.updates for p in policy] == list(range(1, len(policy) + 1))
    assert len(policy) >= 5 and all(p.entropy > 0 for p in policy)


def test_after_seq_resumes_a_broken_watch_with_exactly_the_remaining_events(
        service: Service) -> None:
    # Arrange: a live watch given up after a few events
    job_id = service.client.submit(nb201_spec(budget=15))
    first: list[sp.SearchEvent] = []
    for event in service.client.watch(job_id):
        first.append(event)
        if len(first) == 6:
            break
    # Act
    rest = list(service.client.watch(job_id, after_seq=first[-1].seq))
    # Assert
    everything = list(service.client.watch(job_id))
    assert first + rest == everything
    assert everything[-1].state.state == sp.JOB_STATE_SUCCEEDED
    tail = list(service.client.watch(job_id, after_seq=everything[-3].seq))
    assert tail == everything[-2:]
    assert list(service.client.watch(job_id, after_seq=everything[-1].seq)) == []


def test_a_watch_of_a_compacted_job_starts_with_its_snapshot_then_the_rest(
        tmp_path: Path) -> None:
    # Arrange: a service that keeps 16 journal entries a job; a job of many more
    store = InMemoryJobStore(journal_keep=16)
    runner = job_runner(store, tmp_path, max_running=1)
    with SearchClient(SearchServicer(store, runner)) as client:
        job_id = client.submit(nb201_spec(budget=30))
        job = client.wait(job_id, WAIT_S)
        # Act
        events = list(client.watch(job_id))
        resumed = list(client.watch(job_id, after_seq=events[3].seq))
    runner.close()
    # Assert: one snapshot of the job as of the compacted events, then every later event
    snapshot = events[0]
    assert snapshot.WhichOneof("kind") == "snapshot"
    assert snapshot.seq > 0 and snapshot.snapshot.job.trainings < job.trainings == 30
    assert [e.seq for e in events] == list(range(snapshot.seq, snapshot.seq + len(events)))
    assert 16 <= len(events) - 1 < 32 * 2  # the kept tail's events
    assert events[-1].state.state == sp.JOB_STATE_SUCCEEDED
    assert resumed == events[4:]
    assert len(list(client_trials(store, job_id))) >= 30  # every trial is still listed


def client_trials(store: JobStore, job_id: str) -> list[str]:
    page, after = store.trials(job_id, limit=1000)
    assert after is None
    return [t.trial_id for t in page]


def test_watch_and_export_refuse_unknown_jobs_and_bad_arguments(service: Service) -> None:
    with pytest.raises(NotFoundError, match="job-nope"):
        next(service.client.watch("job-nope"))
    with pytest.raises(InvalidArgumentError, match="after_seq"):
        next(service.client.watch("job-nope", after_seq=-1))
    with pytest.raises(NotFoundError, match="job-nope"):
        service.client.export("job-nope", Path("unused"))
    # a job with no succeeded training: nothing to export yet
    service.store.create("job-empty", "anonymous", "default", {"space": "nb201"})
    with pytest.raises(FailedPreconditionError, match="no succeeded training"):
        service.client.export("job-empty", Path("unused"))
    with pytest.raises(InvalidArgumentError, match="top_k"):
        service.client.export("job-empty", Path("unused"), top_k=1000)


def test_a_watcher_that_goes_away_frees_its_thread(tmp_path: Path) -> None:
    # Arrange: a job that never ends, watched from another thread
    store = InMemoryJobStore()
    store.create("j", "alice", "lab", {"space": "nb201"})
    active = threading.Event()
    active.set()
    seen: list[sp.SearchEvent] = []
    watcher = threading.Thread(target=lambda: seen.extend(
        watch_events(store, "j", is_active=active.is_set)))
    watcher.start()
    time.sleep(0.3)
    # Act: the client goes away (grpc's context.is_active() turns False)
    active.clear()
    watcher.join(5.0)
    # Assert
    assert not watcher.is_alive()
    assert [e.state.state for e in seen] == [sp.JOB_STATE_PENDING]


def test_a_watch_on_a_redis_backed_service_reports_a_resume_s_lost_trials(
        tmp_path: Path) -> None:
    db = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-watch-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore(db, prefix)
    running = serve_search(store, job_runner(store, tmp_path))
    try:
        # Arrange: a finished job, and one a stopped service left with a trial in flight
        with SearchClient(running.address) as client:
            job_id = client.submit(nb201_spec(budget=8))
            client.wait(job_id, WAIT_S)
            store.create("job-old", "anonymous", "default", {"space": "nb201"})
            store.set_state("job-old", "RUNNING")
            store.start_trial("job-old", {"trial_id": "t1", "arch": "a"})
            store.note("job-old", "resumed", {"lost": ["t1"]})
            store.set_state("job-old", "FAILED", "gave up")
            # Act
            events = list(client.watch(job_id))
            old = list(client.watch("job-old"))
        # Assert
        finished = [e.trial_finished.trial for e in _kinds(events, "trial_finished")]
        assert sum(1 for t in finished if not t.cached) == 8
        assert events[-1].state.state == sp.JOB_STATE_SUCCEEDED
        lost = [e.trial_finished.trial for e in _kinds(old, "trial_finished")]
        assert [(t.trial_id, t.status) for t in lost] == [("t1", "lost")]
        assert old[-1].state.state == sp.JOB_STATE_FAILED and old[-1].state.reason == "gave up"
    finally:
        running.stop()
        for key in db.scan_iter(f"{prefix}:*"):
            db.delete(key)
        db.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Service]:
    """A real server only: what the CLI talks to."""
    store = InMemoryJobStore()
    running = serve_search(store, job_runner(store, tmp_path / "work", max_running=1))
    try:
        with SearchClient(running.address) as remote:
            yield Service(remote, store, running.address, tmp_path / "work")
    finally:
        running.stop()


def test_nas_watch_returns_when_the_job_ends_with_its_exit_code(
        server: Service, capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    done = server.client.submit(nb201_spec(budget=10))
    code_done = nas(["watch", done, "--endpoint", server.address])
    out_done = capsys.readouterr().out
    cancelled = server.client.submit(nb201_spec(budget=5000))
    server.client.cancel(cancelled, "enough")
    code_cancelled = nas(["watch", cancelled, "--endpoint", server.address])
    out_cancelled = capsys.readouterr().out
    code_unknown = nas(["watch", "job-nope", "--endpoint", server.address])
    err_unknown = capsys.readouterr().err
    # Assert
    assert code_done == 0 and "SUCCEEDED" in out_done and "trainings 10/10" in out_done
    assert "new best" in out_done and "policy" in out_done
    assert code_cancelled == 1 and "CANCELLED" in out_cancelled and "enough" in out_cancelled
    assert code_unknown == 2 and "job-nope" in err_unknown and "Traceback" not in err_unknown


def test_export_best_of_an_nb201_job_extracts_bundles_load_bundle_reads(
        service: Service, tmp_path: Path) -> None:
    # Arrange
    job_id = service.client.submit(nb201_spec(budget=12))
    service.client.wait(job_id, WAIT_S)
    best = service.client.best(job_id, top_k=3)
    # Act
    bundles = service.client.export(job_id, tmp_path / "out", top_k=3)
    # Assert
    assert [p.parent for p in bundles] == [tmp_path / "out"] * 3
    assert [p.name[:3] for p in bundles] == ["01-", "02-", "03-"]
    docs = [load_bundle(p) for p in bundles]
    assert [d[0]["reward"] for d in docs] == [t.reward for t in best]
    assert [d[0]["arch"] for d in docs] == [t.arch for t in best]
    assert all(recipe == {} and not (p / "weights.pt").exists()
               for (_, recipe), p in zip(docs, bundles, strict=True))
    assert all((p / "cell.png").stat().st_size > 0 for p in bundles)


def test_export_best_of_a_trained_job_carries_loadable_weights(
        server: Service, tmp_path: Path, fashion_mnist_installed: Path,
        one_thread: None) -> None:
    # Arrange: a tiny real training job (seconds)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("space: nb201\nstrategy: reinforce\nevaluator: train\n"
                         "dataset: fashion-mnist\ntrain_subset: 256\nval_subset: 128\n"
                         "budget: 2\nepochs: 1\nfilters: 8\ncells: 1\ndevice: cpu\n")
    job_id = server.client.submit(spec_from_file(spec_path))
    assert server.client.wait(job_id, WAIT_S).state == sp.JOB_STATE_SUCCEEDED
    # Act
    (bundle,) = server.client.export(job_id, tmp_path / "out")
    # Assert
    arch_doc, recipe = load_bundle(bundle)
    assert recipe["dataset"] == "fashion-mnist" and recipe["model"]["filters"] == 8
    arch = create_space(SearchSpaceSpec(**arch_doc["space"])).from_string(arch_doc["arch"])
    model = build_model(arch, ModelSpec(**recipe["model"]))
    model.load_state_dict(torch.load(bundle / "weights.pt", weights_only=True))
    logits = torch.jit.load(str(bundle / "model.ts"))(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert arch_doc["reward"] == server.client.best(job_id)[0].reward
    # the same archive in small pieces (the service's are CHUNK_BYTES) reassembles the same
    pieces = list(export_chunks(server.store, PARTS, server.work_dir, job_id, 1, chunk_bytes=4096))
    assert len(pieces) > 1 and all(len(p) <= 4096 for p in pieces) and CHUNK_BYTES <= 1 << 20
    (again,) = extract_archive(pieces, tmp_path / "again")
    assert (again / "weights.pt").read_bytes() == (bundle / "weights.pt").read_bytes()


def test_nas_export_job_to_dir_and_the_run_directory_form_still_work(
        server: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    job_id = server.client.submit(nb201_spec(budget=6))
    server.client.wait(job_id, WAIT_S)
    run_dir = tmp_path / "run"
    assert nas(["search", "--space", "nb201", "--evaluator", "nb201", "--budget", "6",
                "--out", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    # Act
    code = nas(["export", job_id, "--to", str(tmp_path / "job"), "--top", "2", "--endpoint",
                server.address])
    out = capsys.readouterr().out
    code_run = nas(["export", str(run_dir), "--to", str(tmp_path / "local")])
    code_no_to = nas(["export", job_id, "--endpoint", server.address])
    err_no_to = capsys.readouterr().err
    # Assert
    assert code == 0 and out.count("wrote ") == 2 and "architecture.json" in out
    assert len(list((tmp_path / "job").iterdir())) == 2
    assert code_run == 0 and load_bundle(next((tmp_path / "local").iterdir()))[0]["arch"]
    assert code_no_to == 2 and "--to" in err_no_to and "Traceback" not in err_no_to


@pytest.mark.parametrize("name", ["/etc/evil", "../evil", "01-ok/../../evil"])
def test_an_archive_escaping_its_directory_is_refused(tmp_path: Path, name: str) -> None:
    # Arrange
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = json.dumps({"arch": "x"}).encode()
        member = tarfile.TarInfo(name)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    # Act / Assert
    with pytest.raises(BundleError, match="refusing"):
        extract_archive([buffer.getvalue()], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_a_watch_reconnects_across_a_service_restart_without_gaps_or_repeats(
        tmp_path: Path) -> None:
    db = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-watch-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore(db, prefix)
    first = serve_search(store, job_runner(store, tmp_path))
    second = None
    try:
        spec = nb201_spec(budget=800)
        spec.strategy = "random"
        events: list[sp.SearchEvent] = []
        with SearchClient(first.address) as client:
            job_id = client.submit(spec)
            # Act: the service stops mid-stream and a new one takes over the same port
            for event in client.watch(job_id, reconnect_for=30.0):
                events.append(event)
                if len(events) == 10:
                    first.stop()
                    again = RedisJobStore(redis.Redis.from_url(REDIS_URL), prefix)
                    runner = job_runner(again, tmp_path)
                    second = serve_search(again, runner, port=first.port)
                    assert runner.resume() == [job_id]
        # Assert
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].state.state == sp.JOB_STATE_SUCCEEDED
        finished = [e.trial_finished.trial for e in _kinds(events, "trial_finished")]
        assert sum(1 for t in finished if t.status == "succeeded" and not t.cached) == 800
    finally:
        for running in (first, second):
            if running is not None:
                running.stop()
        for key in db.scan_iter(f"{prefix}:*"):
            db.delete(key)
        db.close()


def test_the_live_table_redraws_in_place_on_a_terminal(server: Service) -> None:
    # Arrange
    job_id = server.client.submit(nb201_spec(budget=5))
    board = Board(server.client.get(job_id), last=3)
    screen = io.StringIO()
    drawn = Screen(screen)
    # Act
    for event in server.client.watch(job_id):
        board.update(event)
        drawn.draw(board, force=True)
    # Assert
    frames = screen.getvalue().split("\x1b[J")[:-1]
    assert len(frames) == len(list(server.client.watch(job_id)))
    ups = [int(f[2:f.index("F")]) if f.startswith("\x1b[") and "F" in f[:6] else 0
           for f in frames]  # each frame first moves up over the one before it
    assert ups == [0] + [f.count("\x1b[2K") for f in frames[:-1]]
    assert "SUCCEEDED  trainings 5/5" in frames[-1] and board.final == sp.JOB_STATE_SUCCEEDED
    assert frames[-1].count("\x1b[2K") == len(board.lines()) == 2 + 3 + 1  # + reason line
