"""Load and bad input against the real gRPC services.

Starts ``nas serve search`` as a subprocess on a free loopback port (jobs in Redis, one
parameter-server shard process, a bearer-token table, optionally Ray workers and their
``TrialReport`` service), then:

1. load: N concurrent clients, each on its own channel, submit NB201-table jobs (small budgets;
   a mix of reinforce on one or two replicas, random and evolution), watch each to its end
   (WatchSearch), then read it back (GetSearch, GetBest, ListTrials, ListSearches). Every
   accepted job must reach SUCCEEDED; per-RPC latency percentiles and status codes are counted.
2. fuzz: a seeded fuzzer sends random and malformed requests to every RPC of the search
   service, the parameter-server shard, a ``TrialReport`` service over a trial board seeded with
   leased trials (served by this process) and, with ``--workers``, the search service's own
   ``TrialReport`` service: random field values (negative and huge numbers, NaN and inf,
   empty, huge and unicode strings, unknown enum values, wrong ids), random bytes as the
   request, truncated and bit-flipped encodings, oversized messages, unknown methods and wrong
   metadata. Targets: no UNKNOWN, no INTERNAL, no status lost to details too big for the
   client's metadata limit, no crash (every server still answers a valid request afterwards,
   the shard process was never restarted).

    python -m bench.load                 # 32 clients, 1500 fuzz requests per service
    python -m bench.load --quick --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import redis
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from tqdm import tqdm

from bench.report import background_load, machine, write_section
from controller.trials.board import TrialBoard
from controller.trials.servicer import RunningTrialReport, serve_trial_reports
from protos.types import Architecture, Node, Resources, Trial, Workload
from protos.v1 import common_pb2 as pb
from protos.v1 import paramserver_pb2 as ps
from protos.v1 import search_pb2 as sp
from protos.v1 import worker_pb2 as wk

ROOT = Path(__file__).resolve().parents[1]
ADMIN, READER = "load-admin-token", "load-reader-token"
CLUSTER = "load-cluster-token"  # the service's shards and TrialReport server require it
CLUSTER_MD = (("authorization", f"Bearer {CLUSTER}"),)
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # every server's receive limit (protos.rpc)
FUZZ_DEADLINE_S = 3.0
FUZZ_CONCURRENCY = 8  # fuzz calls in flight at once
TRIALS_PAGE = 25  # a load client's ListTrials page
SERVICE_EXTRA_AS = 6 << 30  # address space the search service may grow by (a runaway job)
BAD_STATUSES = ("UNKNOWN", "INTERNAL")


# --- the services ---------------------------------------------------------------------------

@dataclass
class Services:
    """The served search service (a subprocess) and what it started."""

    proc: subprocess.Popen[bytes]
    log: Path
    search: str
    shard: str
    shard_metrics: str | None
    trials: str | None  # the service's TrialReport server (with --workers)
    prefix: str
    redis_url: str

    def alive(self) -> bool:
        """Whether the service process still runs."""
        return self.proc.poll() is None


def _wait_for_banner(proc: subprocess.Popen[bytes], log: Path, workers: int,
                     timeout: float = 180.0) -> dict[str, str]:
    """The service's start-up banner, parsed: search address, shard, metrics, trial reports."""
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if m := re.match(r"search service listening on (\S+)", line):
                found["search"] = m.group(1)
            elif m := re.match(r"parameter servers (\S+)", line):
                found["shard"] = m.group(1).split(",")[0]
            elif m := re.match(r"metrics (\S+) \(shard0\)", line):
                found["shard_metrics"] = m.group(1)
            elif m := re.match(r"workers report to (\S+)", line):
                found["trials"] = m.group(1)
        if "search" in found and "shard" in found and ("trials" in found or not workers):
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the search service did not start:\n{log.read_text()[-3000:]}")


def start_services(work: Path, redis_url: str, workers: int, max_running: int) -> Services:
    """``nas serve search`` with one shard, a token table, jobs in Redis under a fresh prefix."""
    tokens = work / "tokens.txt"
    tokens.write_text(f"{ADMIN}:admin\n{READER}:reader:other\n")
    prefix = f"nas-load-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "nas", "serve", "search", "--port", "0", "--redis",
           redis_url, "--redis-prefix", prefix, "--work-dir", str(work / "service"),
           "--max-running", str(max_running), "--shards", "1", "--tokens-file", str(tokens)]
    if workers:
        cmd += ["--workers", str(workers)]
    log = work / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={**os.environ, "NAS_CLUSTER_TOKEN": CLUSTER})
    banner = _wait_for_banner(proc, log, workers)
    # a runaway request (a job asking for billions of threads) ends in a MemoryError of the
    # service instead of starving this shared machine: cap the address space from here on
    with contextlib.suppress(OSError, ValueError):
        import resource

        size = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[0]) * os.sysconf(
            "SC_PAGE_SIZE")
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (size + SERVICE_EXTRA_AS,) * 2)
    return Services(proc, log, banner["search"], banner["shard"], banner.get("shard_metrics"),
                    banner.get("trials"), prefix, redis_url)


def stop_services(services: Services) -> None:
    """SIGTERM the service (it stops its shard and Ray), then drop its Redis keys."""
    if services.alive():
        services.proc.terminate()
        try:
            services.proc.wait(30)
        except subprocess.TimeoutExpired:
            services.proc.kill()
            services.proc.wait()
    with contextlib.suppress(redis.RedisError):
        db = redis.Redis.from_url(services.redis_url)
        keys = list(db.scan_iter(f"{services.prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            db.delete(*keys[start:start + 500])


def shard_start_time(services: Services) -> float | None:
    """The shard process's start time (process_start_time_seconds): a restart changes it."""
    if not services.shard_metrics:
        return None
    with urllib.request.urlopen(services.shard_metrics, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("process_start_time_seconds "):
                return float(line.split()[1])
    return None


# --- call recording -------------------------------------------------------------------------

@dataclass
class Recorder:
    """Status codes by (service, method), and latencies of successful load calls."""

    codes: dict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    examples: dict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def example(self, service: str, code: str, details: str) -> None:
        """Count one answer's details (numbers blanked, so alike answers count together)."""
        with self.lock:
            self.examples[(service, code)][re.sub(r"-?\d[\d.e+-]*", "N", details)[:120]] += 1

    def add(self, service: str, method: str, code: str, seconds: float | None = None) -> None:
        with self.lock:
            self.codes[(service, method)][code] += 1
            if seconds is not None and code == "OK":
                self.seconds[method].append(seconds)

    def by_service(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for (service, _), codes in self.codes.items():
            out[service].update(codes)
        return dict(out)


def _code(exc: grpc.RpcError) -> str:
    return exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"


def _details(exc: grpc.RpcError) -> str:
    return f"{_code(exc)}: {exc.details() if isinstance(exc, grpc.Call) else exc}"


def _raw(channel: grpc.Channel, path: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary method called with serialized requests, answering serialized responses."""
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(path)
    return call


def _raw_stream(channel: grpc.Channel, path: str) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
    """``_raw`` for a server-streaming method."""
    call: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(path)
    return call


# --- 1. load --------------------------------------------------------------------------------

def job_spec(client: int, index: int, budget: int, seed: int) -> sp.SearchSpec:
    """The ``index``-th job of a client: reinforce (every third on two replicas sharing the
    policy through the shard), random or evolution on the NB201 table."""
    kind = (client + index) % 4
    strategy = ["reinforce", "reinforce", "random", "evolution"][kind]
    spec = sp.SearchSpec(name=f"load c{client} j{index}",
                         space=pb.SearchSpaceSpec(name="nb201"), strategy=strategy,
                         evaluation=sp.EvaluationSpec(evaluator="nb201", dataset="cifar10"),
                         budget=budget, seed=seed * 100_000 + client * 100 + index)
    if kind == 1:
        spec.execution.replicas = 2
    if strategy == "evolution":
        spec.strategy_options.population = 4
        spec.strategy_options.tournament = 2
    return spec


@dataclass
class LoadResult:
    submitted: int = 0
    accepted: list[str] = field(default_factory=list)
    succeeded: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _timed(rec: Recorder, method: str, fn: Callable[[], Any]) -> Any:
    begin = time.perf_counter()
    try:
        reply = fn()
    except grpc.RpcError as exc:
        rec.add("search", method, _code(exc))
        raise
    rec.add("search", method, "OK", time.perf_counter() - begin)
    return reply


def _client(address: str, client: int, jobs: int, budget: int, seed: int, rec: Recorder,
            result: LoadResult, lock: threading.Lock, progress: tqdm[Any],
            job_timeout: float) -> None:
    from protos.v1 import search_pb2_grpc as sp_grpc

    md = (("authorization", f"Bearer {ADMIN}"),)
    with grpc.insecure_channel(address) as channel:
        stub = sp_grpc.SearchServiceStub(channel)
        for index in range(jobs):
            spec = job_spec(client, index, budget, seed)
            with lock:
                result.submitted += 1
            request = sp.SubmitSearchRequest(spec=spec)
            try:
                job_id = _timed(rec, "SubmitSearch", functools.partial(
                    stub.SubmitSearch, request, metadata=md, timeout=60)).job_id
            except grpc.RpcError as exc:
                with lock:
                    result.problems.append(f"client {client}: SubmitSearch {_details(exc)}")
                progress.update(1)
                continue
            with lock:
                result.accepted.append(job_id)
            try:
                _follow(stub, md, job_id, budget, rec, result, lock, job_timeout)
            except grpc.RpcError as exc:
                with lock:
                    result.problems.append(f"{job_id}: {_details(exc)}")
            progress.update(1)


def _follow(stub: Any, md: Any, job_id: str, budget: int, rec: Recorder, result: LoadResult,
            lock: threading.Lock, job_timeout: float) -> None:
    """Watch the job to its final state event, then read it back."""
    begin = time.perf_counter()
    first: float | None = None
    last_state = sp.JOB_STATE_UNSPECIFIED
    try:
        for event in stub.WatchSearch(sp.WatchSearchRequest(job_id=job_id), metadata=md,
                                      timeout=job_timeout):
            if first is None:
                first = time.perf_counter() - begin
            if event.WhichOneof("kind") == "state":
                last_state = event.state.state
    except grpc.RpcError as exc:
        rec.add("search", "WatchSearch", _code(exc))
        raise
    rec.add("search", "WatchSearch", "OK", first)
    rec.add("search", "WatchSearch (whole job)", "OK", time.perf_counter() - begin)
    job = _timed(rec, "GetSearch", lambda: stub.GetSearch(
        sp.GetSearchRequest(job_id=job_id), metadata=md, timeout=60))
    best = _timed(rec, "GetBest", lambda: stub.GetBest(
        sp.GetBestRequest(job_id=job_id, top_k=3), metadata=md, timeout=60))
    trials: list[sp.TrialRecord] = []
    token = ""
    while True:
        request = sp.ListTrialsRequest(job_id=job_id, page_size=TRIALS_PAGE, page_token=token)
        page = _timed(rec, "ListTrials", functools.partial(
            stub.ListTrials, request, metadata=md, timeout=60))
        trials.extend(page.trials)
        token = page.next_page_token
        if not token:
            break
    _timed(rec, "ListSearches", lambda: stub.ListSearches(
        sp.ListSearchesRequest(state=sp.JOB_STATE_SUCCEEDED), metadata=md, timeout=60))
    trained = sum(1 for t in trials if t.status == "succeeded" and not t.cached)
    ok = (last_state == job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == budget
          and trained == budget and len(best.trials) >= 1)
    with lock:
        if ok:
            result.succeeded.append(job_id)
        else:
            result.problems.append(
                f"{job_id}: watched {sp.JobState.Name(last_state)}, job "
                f"{sp.JobState.Name(job.state)} ({job.reason}), trainings {job.trainings}/"
                f"{budget}, {trained} trained trials listed, {len(best.trials)} best")


def run_load(address: str, clients: int, jobs: int, budget: int, seed: int,
             rec: Recorder, job_timeout: float) -> LoadResult:
    """``clients`` threads, each on its own channel, each running ``jobs`` jobs in turn."""
    result = LoadResult()
    lock = threading.Lock()
    begin = time.perf_counter()
    with tqdm(total=clients * jobs, desc="load: jobs", unit="job") as progress:
        threads = [threading.Thread(target=_client, args=(address, c, jobs, budget, seed, rec,
                                                           result, lock, progress,
                                                           job_timeout), daemon=True)
                   for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    result.seconds = time.perf_counter() - begin
    return result


# --- 2. fuzz --------------------------------------------------------------------------------

INT32 = [0, 1, -1, 2, 7, 100, -100, 2**31 - 1, -(2**31), 65536]
INT64 = [*INT32, 2**63 - 1, -(2**63), 2**40]
UINT = [0, 1, 2**32 - 1, 7]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 5e-324, 1e308, -1e308, math.nan, math.inf,
          -math.inf, 1e9, -3.5]
WEIRD = ["", " ", "\x00", "ü¨ñ", "\u202e\u0301🙂", "../../etc/passwd", "a" * 300, "%s%n",
         "null", "-1", "0", "job-", "NaN", "\n", "\uffff", "日本語", "Bearer x"]
WORDS = ["nb201", "nasnet", "enas-micro", "macro", "rnn-cell", "reinforce", "random",
         "evolution", "pnas", "cifar10", "cifar100", "imagenet16", "fashion-mnist", "text",
         "train", "nb201", "sample-efficient", "zoph-le", "enas", "ppo", "rank", "cubed", "none",
         "succeeded", "failed", "running", "lstm", "mlp", "params", "flops", "latency_ms",
         "float32", "float64", "last", "max5", "cpu", "cuda:7"]
HUGE_STRING = "x" * 200_000

_INTS = {FieldDescriptor.TYPE_INT32: INT32, FieldDescriptor.TYPE_SINT32: INT32,
         FieldDescriptor.TYPE_SFIXED32: INT32, FieldDescriptor.TYPE_INT64: INT64,
         FieldDescriptor.TYPE_SINT64: INT64, FieldDescriptor.TYPE_SFIXED64: INT64,
         FieldDescriptor.TYPE_UINT32: UINT, FieldDescriptor.TYPE_FIXED32: UINT,
         FieldDescriptor.TYPE_UINT64: UINT, FieldDescriptor.TYPE_FIXED64: UINT}


class Fuzzer:
    """Random and mutated requests from the message descriptors, seeded; ``ids`` are real ids
    (jobs, trials, layouts) mixed into string fields so requests reach past NOT_FOUND."""

    def __init__(self, seed: int, ids: list[str]) -> None:
        self.rng = np.random.default_rng(seed)
        self.ids = ids

    def _pick(self, values: list[Any]) -> Any:
        return values[int(self.rng.integers(len(values)))]

    def scalar(self, f: FieldDescriptor) -> Any:
        r = self.rng.random()
        if f.type in _INTS:
            if r < 0.3:
                return int(self.rng.integers(-5, 50)) if f.type not in (
                    FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
                    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64) else \
                    int(self.rng.integers(0, 50))
            return self._pick(_INTS[f.type])
        if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return float(self.rng.normal() * 10) if r < 0.3 else self._pick(FLOATS)
        if f.type == FieldDescriptor.TYPE_BOOL:
            return bool(r < 0.5)
        if f.type == FieldDescriptor.TYPE_ENUM:
            assert f.enum_type is not None
            known = [v.number for v in f.enum_type.values]
            return self._pick(known) if r < 0.6 else self._pick([-1, 3, 7, 99, 2**31 - 1])
        if f.type == FieldDescriptor.TYPE_STRING:
            if r < 0.3 and self.ids:
                return self._pick(self.ids)
            if r < 0.55:
                return self._pick(WORDS)
            if r < 0.6:
                return HUGE_STRING
            return self._pick(WEIRD)
        if f.type == FieldDescriptor.TYPE_BYTES:
            n = self._pick([0, 1, 3, 4, 8, 7, 64, 4096, 4 * 64])
            return self.rng.bytes(n)
        raise ValueError(f"unexpected field type {f.type}")

    def fill(self, msg: Message, depth: int = 0, density: float = 0.6) -> Message:
        """Set a random subset of ``msg``'s fields to random values."""
        for f in msg.DESCRIPTOR.fields:
            if self.rng.random() > density:
                continue
            self.set_field(msg, cast(FieldDescriptor, f), depth)
        return msg

    def set_field(self, msg: Message, f: FieldDescriptor, depth: int) -> None:
        """Give one field a random value (a repeated one: a few random elements)."""
        try:
            entry = f.message_type
            if entry is not None and entry.GetOptions().map_entry:
                container = getattr(msg, f.name)
                key_f, value_f = (entry.fields_by_name[n] for n in ("key", "value"))
                for _ in range(int(self.rng.integers(0, 4))):
                    key = self.scalar(key_f)
                    if value_f.type == FieldDescriptor.TYPE_MESSAGE:
                        self.fill(container[key], depth + 1)
                    else:
                        container[key] = self.scalar(value_f)
            elif f.is_repeated:
                container = getattr(msg, f.name)
                del container[:]
                count = int(self._pick([0, 1, 2, 3, 1000 if depth == 0 else 3]))
                for _ in range(count):
                    if f.type == FieldDescriptor.TYPE_MESSAGE:
                        self.fill(container.add(), depth + 1, 0.4)
                    else:
                        container.append(self.scalar(f))
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                sub = getattr(msg, f.name)
                sub.SetInParent()
                if depth < 4:
                    self.fill(sub, depth + 1)
            else:
                setattr(msg, f.name, self.scalar(f))
        except (ValueError, TypeError, OverflowError):
            pass  # a value this field's Python type refuses: leave it as it was

    def mutate(self, valid: Message) -> Message:
        """``valid`` with one to three fields (possibly nested) set to random values or
        cleared."""
        msg = type(valid)()
        msg.CopyFrom(valid)
        for _ in range(int(self.rng.integers(1, 4))):
            target: Message = msg
            for _ in range(4):  # walk into a set sub-message now and then
                subs = [f for f in target.DESCRIPTOR.fields
                        if f.type == FieldDescriptor.TYPE_MESSAGE
                        and not f.is_repeated
                        and target.HasField(f.name)]
                if not subs or self.rng.random() < 0.5:
                    break
                target = getattr(target, self._pick(subs).name)
            f = self._pick(list(target.DESCRIPTOR.fields))
            if self.rng.random() < 0.15:
                target.ClearField(f.name)
            else:
                self.set_field(target, f, 1)
        return msg


@dataclass
class Target:
    """One gRPC service to fuzz: its methods, a valid request of each, good metadata."""

    name: str
    address: str
    service: ServiceDescriptor
    valid: dict[str, Message]
    metadata: tuple[tuple[str, str], ...] = ()
    authenticated: bool = False


MODES = [("mutated", 0.36), ("random fields", 0.17), ("empty", 0.03), ("random bytes", 0.12),
         ("truncated", 0.09), ("bit flips", 0.06), ("wrong metadata", 0.15),
         ("unknown method", 0.02)]


def _bad_metadata(fuzz: Fuzzer, target: Target, method: str) -> tuple[tuple[str, Any], ...]:
    choices: list[tuple[tuple[str, Any], ...]] = [
        (), (("authorization", "Bearer nope"),), (("authorization", "Basic dXNlcjpwdw=="),),
        (("authorization", "Bearer "),), (("authorization", "Bearer"),),
        (("authorization", f"Bearer {READER}"),),
        (("authorization", f"Bearer {ADMIN}"), ("authorization", "Bearer nope")),
        (("authorization", "Bearer " + "x" * 20_000),),
        (("authorization-bin", fuzz.rng.bytes(16)),),
        (("authorization", f"bearer {ADMIN}  "),),
        (("x-unknown", "\u00e9"),),
        (("authorization", f"Bearer {ADMIN}"), ("grpc-timeout", "1S")),
    ]
    return fuzz._pick(choices)


@dataclass
class FuzzCall:
    target: Target
    method: str
    mode: str
    payload: bytes
    metadata: tuple[tuple[str, Any], ...]


def make_calls(target: Target, fuzz: Fuzzer, count: int) -> list[FuzzCall]:
    """``count`` seeded calls spread over the methods and modes, plus one oversized request
    per method."""
    methods = list(target.service.methods_by_name)
    names, weights = zip(*MODES, strict=True)
    calls: list[FuzzCall] = []
    for i in range(count):
        method = methods[i % len(methods)]
        desc = target.service.methods_by_name[method]
        valid = target.valid[method]
        mode = str(fuzz.rng.choice(names, p=np.array(weights) / sum(weights)))
        metadata = target.metadata
        encoded = valid.SerializeToString()
        if mode == "mutated":
            payload = fuzz.mutate(valid).SerializeToString()
        elif mode == "random fields":
            payload = fuzz.fill(_message_class(desc.input_type)()).SerializeToString()
        elif mode == "empty":
            payload = b""
        elif mode == "random bytes":
            payload = fuzz.rng.bytes(int(fuzz._pick([1, 2, 5, 16, 100, 1000, 65536])))
        elif mode == "truncated":
            payload = encoded[:int(fuzz.rng.integers(0, max(len(encoded), 1)))]
        elif mode == "bit flips":
            data = bytearray(encoded or b"\x00")
            for _ in range(int(fuzz.rng.integers(1, 4))):
                data[int(fuzz.rng.integers(len(data)))] ^= 1 << int(fuzz.rng.integers(8))
            payload = bytes(data)
        elif mode == "wrong metadata":
            payload = (fuzz.mutate(valid) if fuzz.rng.random() < 0.3 else valid) \
                .SerializeToString()
            metadata = _bad_metadata(fuzz, target, method)
        else:  # unknown method
            payload, method = encoded, fuzz._pick(["Nope", method.lower(), method + "V2", ""])
        calls.append(FuzzCall(target, method, mode, payload, metadata))
    oversized = OVERSIZED_HEAD + b"\x00" * MAX_MESSAGE_BYTES
    calls.append(FuzzCall(target, methods[0], "oversized", oversized, target.metadata))
    return calls


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# the oversized request's header: field 1, length-delimited, MAX_MESSAGE_BYTES long
OVERSIZED_HEAD = b"\x0a" + _varint(MAX_MESSAGE_BYTES)


def _message_class(desc: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def send(channels: dict[str, grpc.Channel], call: FuzzCall, rec: Recorder) -> None:
    """Send one fuzzed call as raw bytes and count its status (a stream: read it all)."""
    target = call.target
    path = f"/{target.service.full_name}/{call.method}"
    desc = target.service.methods_by_name.get(call.method)
    channel = channels[target.name]
    method = call.method if desc is not None else "(unknown method)"
    code = "OK"
    try:
        if desc is not None and desc.server_streaming:
            for _ in _raw_stream(channel, path)(call.payload, metadata=call.metadata,
                                                timeout=FUZZ_DEADLINE_S):
                pass
        else:
            _raw(channel, path)(call.payload, metadata=call.metadata, timeout=FUZZ_DEADLINE_S)
    except grpc.RpcError as exc:
        code = _code(exc)
        if code == "INTERNAL" and isinstance(exc, grpc.Call) and \
                exc.details() == "Invalid metadata":  # grpc core refused to send it
            code = "CLIENT_REFUSED"
        else:
            details = str(exc.details() if isinstance(exc, grpc.Call) else exc)
            rec.example(target.name, code, details)
            if code == "RESOURCE_EXHAUSTED" and "received metadata size exceeds" in details \
                    and call.mode != "wrong metadata":  # not ours: the answer's details were
                code = "LOST STATUS"  # too big, the client dropped the real status
            if code in (*BAD_STATUSES, "LOST STATUS"):
                rec.add(target.name, f"!{method} [{call.mode}] {details}"[:300], code)
    except (ValueError, TypeError):  # metadata the client library refuses to send
        code = "CLIENT_REFUSED"
    rec.add(target.name, method, code)
    rec.add(target.name, f"mode:{call.mode}", code)


def fuzz_targets(targets: list[Target], count: int, seed: int, ids: list[str],
                 rec: Recorder, concurrency: int = FUZZ_CONCURRENCY) -> float:
    """Fuzz every target's every method with ``count`` calls each (plus an oversized one)."""
    fuzz = Fuzzer(seed, ids)
    calls = [c for t in targets for c in make_calls(t, fuzz, count)]
    order = fuzz.rng.permutation(len(calls))
    options = [("grpc.max_send_message_length", -1),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    channels = {t.name: grpc.insecure_channel(t.address, options=options) for t in targets}
    begin = time.perf_counter()
    try:
        with futures.ThreadPoolExecutor(concurrency) as pool, \
                tqdm(total=len(calls), desc="fuzz: calls", unit="call") as progress:
            pending = [pool.submit(send, channels, calls[i], rec) for i in order]
            for done in futures.as_completed(pending):
                done.result()
                progress.update(1)
    finally:
        for channel in channels.values():
            channel.close()
    return time.perf_counter() - begin


# --- the fuzz targets' valid requests ---------------------------------------------------------

WORKLOAD = Workload("fashion-mnist", {"cells": 1, "filters": 4, "drop_path": 0.0,
                                      "aux_head": False},
                    {"epochs": 1, "batch_size": 64, "learning_rate": 0.05,
                     "weight_decay": 3e-4, "label_smoothing": 0.0,
                     "lr_schedule": "cosine-step", "grad_clip": None, "reward": "last",
                     "cube_reward": False, "seed": 0, "aux_weight": 0.4, "device": "cpu"},
                    "/tmp/nas-load-weights")


def seeded_trial_service(trials: int) -> tuple[RunningTrialReport, TrialBoard, list[str]]:
    """A TrialReport server over a board with ``trials`` queued trials, half of them leased
    (attempt 1), so reports about real trials and attempts reach the board's rules."""
    board = TrialBoard(max_attempts=3, heartbeat_seconds=5.0, heartbeat_timeout=60.0)
    arch = Architecture("nb201", (Node("edge", "skip_connect", (0,), attrs={"to": 1}),))
    ids = [f"fuzz-t{i}" for i in range(trials)]
    for i, trial_id in enumerate(ids):
        board.submit(Trial(trial_id, arch, (0,), f"h{i}", job_id="fuzz-job"), WORKLOAD,
                     Resources(1.0, 0.0))
    board.lease(trials // 2, 0.0, [])
    return serve_trial_reports(board), board, ids


def search_valid(job_id: str) -> dict[str, Message]:
    spec = job_spec(0, 0, 2, 0)
    return {"SubmitSearch": sp.SubmitSearchRequest(spec=spec),
            "GetSearch": sp.GetSearchRequest(job_id=job_id),
            "ListSearches": sp.ListSearchesRequest(state=sp.JOB_STATE_SUCCEEDED),
            "CancelSearch": sp.CancelSearchRequest(job_id=job_id, reason="fuzz"),
            "ListTrials": sp.ListTrialsRequest(job_id=job_id, status="succeeded", page_size=5),
            "GetBest": sp.GetBestRequest(job_id=job_id, top_k=2),
            "WatchSearch": sp.WatchSearchRequest(job_id=job_id, after_seq=1),
            "ExportBest": sp.ExportBestRequest(job_id=job_id, top_k=1)}


FUZZ_LAYOUT_SIZE = 64


def paramserver_valid(layout_id: str) -> dict[str, Message]:
    values = np.zeros(FUZZ_LAYOUT_SIZE, dtype="<f4").tobytes()
    layout = ps.Layout(layout_id=layout_id, total_size=FUZZ_LAYOUT_SIZE, num_shards=1,
                       policy=ps.UPDATE_POLICY_ASYNC, staleness=1_000_000, sync_pushes=1,
                       learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    tensor = ps.Tensor(start=0, length=FUZZ_LAYOUT_SIZE, dtype="float32", data=values)
    return {"RegisterLayout": ps.RegisterLayoutRequest(layout=layout, shard=0, initial=tensor),
            "Pull": ps.PullRequest(layout_id=layout_id, start=0, length=8, min_version=0),
            "Push": ps.PushRequest(layout_id=layout_id, replica_id="fuzz", seq=1,
                                   base_version=0, gradient=tensor),
            "ShardStatus": ps.ShardStatusRequest(layout_id=layout_id)}


def trials_valid(trial_id: str) -> dict[str, Message]:
    result = pb.TrialResult(trial_id=trial_id, status=pb.TRIAL_STATUS_SUCCEEDED, reward=0.5,
                            metrics={"epochs": 1.0})
    return {"LeaseTrials": wk.LeaseRequest(worker_id="fuzz", max_trials=1, wait_seconds=0.0),
            "ReportStart": wk.StartReport(trial_id=trial_id, attempt=1, worker="fuzz:1",
                                          device="cpu"),
            "Heartbeat": wk.HeartbeatReport(trial_id=trial_id, attempt=1),
            "ReportProgress": wk.ProgressReport(trial_id=trial_id, attempt=1, epoch=1,
                                                train_loss=1.0, val_accuracy=0.5),
            "ReportResult": wk.ResultReport(trial_id=trial_id, attempt=1, result=result,
                                            artifacts={"weights": "/tmp/w"}),
            "ReportLost": wk.LostReport(trial_id=trial_id, attempt=1, reason="fuzz",
                                        retryable=True)}


# --- after the fuzz: is everything still up? -------------------------------------------------

def health_checks(services: Services, targets: list[Target], job_id: str,
                  layout_id: str) -> dict[str, str]:
    """Each server's answer to a valid request after the fuzzing ("OK" or what went wrong)."""
    out: dict[str, str] = {}
    md = (("authorization", f"Bearer {ADMIN}"),)
    for t in targets:
        try:
            with grpc.insecure_channel(t.address) as channel:
                if t.name == "search":
                    health = health_pb2.HealthCheckResponse.FromString(_raw(
                        channel, "/grpc.health.v1.Health/Check")(
                        health_pb2.HealthCheckRequest(service="").SerializeToString(),
                        timeout=10))
                    if health.status != health_pb2.HealthCheckResponse.SERVING:
                        raise RuntimeError(f"health {health.status}")
                    _raw(channel, f"/{t.service.full_name}/GetSearch")(
                        sp.GetSearchRequest(job_id=job_id).SerializeToString(), metadata=md,
                        timeout=10)
                elif t.name == "paramserver":
                    _raw(channel, f"/{t.service.full_name}/ShardStatus")(
                        ps.ShardStatusRequest(layout_id=layout_id).SerializeToString(),
                        metadata=t.metadata, timeout=10)
                else:
                    _raw(channel, f"/{t.service.full_name}/LeaseTrials")(
                        wk.LeaseRequest(worker_id="check").SerializeToString(),
                        metadata=t.metadata, timeout=10)
            out[t.name] = "OK"
        except (grpc.RpcError, RuntimeError) as exc:
            out[t.name] = f"{_code(exc) if isinstance(exc, grpc.RpcError) else exc}"
    out["search process"] = "running" if services.alive() else \
        f"exited {services.proc.returncode}"
    return out


def cancel_leftovers(address: str) -> list[tuple[str, str]]:
    """Cancel the jobs the fuzzer's submits left running; their (job id, state) before."""
    from protos.v1 import search_pb2_grpc as sp_grpc

    md = (("authorization", f"Bearer {ADMIN}"),)
    left = []
    with grpc.insecure_channel(address) as channel:
        stub = sp_grpc.SearchServiceStub(channel)
        for job in stub.ListSearches(sp.ListSearchesRequest(), metadata=md, timeout=30).jobs:
            if job.state in (sp.JOB_STATE_PENDING, sp.JOB_STATE_RUNNING):
                left.append((job.job_id, sp.JobState.Name(job.state)))
                with contextlib.suppress(grpc.RpcError):
                    stub.CancelSearch(sp.CancelSearchRequest(job_id=job.job_id), metadata=md,
                                      timeout=30)
    return left


def fuzz_job_outcomes(address: str, load_jobs: set[str]) -> Counter[str]:
    """How the jobs the fuzzer submitted ended (FAILED ones by reason)."""
    from protos.v1 import search_pb2_grpc as sp_grpc

    md = (("authorization", f"Bearer {ADMIN}"),)
    out: Counter[str] = Counter()
    with grpc.insecure_channel(address) as channel:
        jobs = sp_grpc.SearchServiceStub(channel).ListSearches(
            sp.ListSearchesRequest(), metadata=md, timeout=30).jobs
    for job in jobs:
        if job.job_id not in load_jobs:
            state = sp.JobState.Name(job.state).removeprefix("JOB_STATE_")
            out[state + (f" ({job.reason[:80]})" if state == "FAILED" else "")] += 1
    return out


# --- the report -----------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float]:
    ms = np.array(values) * 1000
    return {"n": float(ms.size), "p50": float(np.percentile(ms, 50)),
            "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max())}


def _codes(counter: Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counter.items(), key=lambda x: -x[1]))


def render(report: dict[str, Any], command: str) -> str:
    load, fuzz = report["load"], report["fuzz"]
    lines = [
        "## Load and bad input", "",
        f"Machine: {machine()}; {background_load()}.",
        f"Command: `{command}` ({report['seconds']:.0f} s).", "",
        f"`nas serve search` ran as a subprocess on 127.0.0.1 (port 0): jobs in Redis, one "
        f"parameter-server shard process (`--shards 1`), a token table (an admin and a reader "
        f"token), `--max-running {report['max_running']}`"
        + (f", `--workers {report['workers']}` (a local Ray and its TrialReport service)"
           if report["workers"] else ", no Ray workers") + ".", "",
        "### Load", "",
        f"{load['clients']} concurrent clients (one channel each) ran {load['jobs_per_client']} "
        f"NB201-table jobs each, budget {load['budget']} (reinforce on one replica, reinforce "
        f"on two replicas sharing the policy through the shard, random, evolution): submit, "
        f"WatchSearch to the end, GetSearch, GetBest, ListTrials (pages of {TRIALS_PAGE}), "
        "ListSearches.",
        "",
        f"- jobs: {load['submitted']} submitted, {load['accepted']} accepted, "
        f"{load['succeeded']} SUCCEEDED with every training listed; lost: "
        f"{load['accepted'] - load['succeeded']}; wall {load['seconds']:.0f} s "
        f"({load['accepted'] * load['budget'] / max(load['seconds'], 1e-9):.1f} trainings/s)",
        f"- status codes: {_codes(Counter(load['codes']))}", "",
        "| RPC | calls | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for method, p in load["latency_ms"].items():
        lines.append(f"| {method} | {p['n']:.0f} | {p['p50']:.1f} | {p['p95']:.1f} | "
                     f"{p['p99']:.1f} | {p['max']:.1f} |")
    lines += ["", "WatchSearch is the time to the first event; \"whole job\" is submit-to-end "
              "as a watcher sees it (queueing for one of the job slots included).", "",
              "### Fuzz", "",
              f"Seed {fuzz['seed']}, {fuzz['per_service']} calls per service spread over its "
              f"RPCs (plus one oversized request of {MAX_MESSAGE_BYTES // 2**20} MiB + "
              f"{len(OVERSIZED_HEAD)} B), "
              f"deadline {FUZZ_DEADLINE_S:.0f} s, {FUZZ_CONCURRENCY} at once; "
              f"{fuzz['seconds']:.0f} s. Modes: "
              + ", ".join(f"{m} {w:.0%}" for m, w in MODES) + ". Real ids (jobs, trials, the "
              "layout) are mixed into string fields.", "",
              "| service | calls | status codes | UNKNOWN | INTERNAL | LOST STATUS | after the "
              "fuzz |", "|---|---:|---|---:|---:|---:|---|"]
    for name, codes in fuzz["codes"].items():
        c = Counter(codes)
        lines.append(f"| {name} | {sum(c.values())} | {_codes(c)} | {c['UNKNOWN']} | "
                     f"{c['INTERNAL']} | {c['LOST STATUS']} | {fuzz['health'].get(name, '?')} |")
    lines += ["", f"Search process after the fuzz: {fuzz['health']['search process']}; "
              f"shard process restarted: {fuzz['shard_restarted']}. Jobs the fuzzer's "
              f"SubmitSearch calls got accepted: {_codes(Counter(fuzz['fuzz_jobs'])) or 'none'}"
              f"; {len(fuzz['left_running'])} were still running and were cancelled.", "",
              "Per RPC (fuzz):", "", "| service | RPC | status codes |", "|---|---|---|"]
    for name, methods in fuzz["per_method"].items():
        for method, codes in sorted(methods.items()):
            lines.append(f"| {name} | {method} | {_codes(Counter(codes))} |")
    lines += ["", "Where the RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED answers came from (the "
              "commonest details per service, numbers as N):", ""]
    for key, details in fuzz["examples"].items():
        lines.append(f"- {key}: " + "; ".join(f"`{d}` x{n}" for d, n in details.items()))
    lines += ["", "LOST STATUS (a target: none): an answer whose details (quoting a huge "
              "request field) passed the client's 16 KiB metadata limit, so the client saw "
              "RESOURCE_EXHAUSTED instead of the real status.", "",
              "CLIENT_REFUSED: metadata the client library itself would not send (a "
              "non-ASCII value: grpc core fails the call locally with INTERNAL \"Invalid "
              "metadata\"; nothing reached a server).", "", "Per mode (all services):", "",
              "| mode | status codes |", "|---|---|"]
    for mode, codes in sorted(fuzz["per_mode"].items()):
        lines.append(f"| {mode} | {_codes(Counter(codes))} |")
    if fuzz["bad"]:
        lines += ["", "UNKNOWN / INTERNAL / LOST STATUS answers:", ""]
        lines += [f"- {b}" for b in fuzz["bad"][:20]]
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the services, load them, fuzz them, check them; the numbers."""
    begin = time.perf_counter()
    db = redis.Redis.from_url(args.redis)
    db.ping()
    trial_server, board, trial_ids = seeded_trial_service(16)
    with tempfile.TemporaryDirectory(prefix="nas-load-") as tmp:
        services = start_services(Path(tmp), args.redis, args.workers, args.max_running)
        try:
            rec = Recorder()
            load = run_load(services.search, args.clients, args.jobs, args.budget, args.seed,
                            rec, args.job_timeout)
            load_codes = rec.by_service().get("search", Counter())
            load_latency = {m: percentiles(v) for m, v in sorted(rec.seconds.items())}
            job_ids = load.accepted or ["job-000000000000"]
            layout_id = f"fuzz-layout-{uuid.uuid4().hex[:6]}"
            with grpc.insecure_channel(services.shard) as channel:  # a layout to push to
                _raw(channel, "/nas.v1.ParameterServer/RegisterLayout")(
                    paramserver_valid(layout_id)["RegisterLayout"].SerializeToString(),
                    metadata=CLUSTER_MD, timeout=30)
            started = shard_start_time(services)
            targets = [
                Target("search", services.search, sp.DESCRIPTOR.services_by_name[
                    "SearchService"], search_valid(job_ids[0]),
                       (("authorization", f"Bearer {ADMIN}"),), True),
                Target("paramserver", services.shard, ps.DESCRIPTOR.services_by_name[
                    "ParameterServer"], paramserver_valid(layout_id), CLUSTER_MD, True),
                Target("trials (seeded board)", trial_server.address,
                       wk.DESCRIPTOR.services_by_name["TrialReport"],
                       trials_valid(trial_ids[0]))]
            if services.trials:
                targets.append(Target("trials (service's)", services.trials,
                                      wk.DESCRIPTOR.services_by_name["TrialReport"],
                                      trials_valid(trial_ids[0]), CLUSTER_MD, True))
            fuzz_rec = Recorder()
            ids = [*job_ids[:4], *trial_ids[:4], layout_id]
            fuzz_seconds = fuzz_targets(targets, args.fuzz_requests, args.seed, ids, fuzz_rec)
            health = health_checks(services, targets, job_ids[0], layout_id)
            restarted = started is not None and shard_start_time(services) != started
            left = cancel_leftovers(services.search) if services.alive() else []
            fuzz_jobs = fuzz_job_outcomes(services.search, set(load.accepted)) \
                if services.alive() else Counter()
        finally:
            stop_services(services)
            trial_server.stop(None)
            board.close()
    per_method: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    per_mode: dict[str, Counter[str]] = defaultdict(Counter)
    bad: list[str] = []
    codes: dict[str, Counter[str]] = defaultdict(Counter)
    for (name, method), counter in fuzz_rec.codes.items():
        if method.startswith("mode:"):
            per_mode[method.removeprefix("mode:")].update(counter)
        elif method.startswith("!"):
            bad.append(f"{name}: {method[1:]} ({_codes(counter)})")
        else:
            per_method[name][method] = dict(counter)
            codes[name].update(counter)
    return {
        "seconds": time.perf_counter() - begin, "workers": args.workers,
        "max_running": args.max_running,
        "load": {"clients": args.clients, "jobs_per_client": args.jobs, "budget": args.budget,
                 "submitted": load.submitted, "accepted": len(load.accepted),
                 "succeeded": len(load.succeeded), "problems": load.problems,
                 "seconds": load.seconds, "codes": dict(load_codes),
                 "per_method": {m: dict(c) for (_, m), c in rec.codes.items()},
                 "latency_ms": load_latency},
        "fuzz": {"seed": args.seed, "per_service": args.fuzz_requests, "seconds": fuzz_seconds,
                 "codes": {k: dict(v) for k, v in codes.items()}, "per_method": dict(per_method),
                 "per_mode": {k: dict(v) for k, v in per_mode.items()}, "bad": bad,
                 "health": health, "shard_restarted": restarted,
                 "examples": {f"{name} {code}": dict(c.most_common(3))
                              for (name, code), c in sorted(fuzz_rec.examples.items())
                              if code in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED",
                                          *BAD_STATUSES)},
                 "left_running": left, "fuzz_jobs": dict(fuzz_jobs),
                 "methods": {t.name: list(t.service.methods_by_name) for t in targets}}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n\n")[0],
        epilog="Writes the section 'load' of BENCHMARKS.md (unless --no-write). Needs Redis "
               "(--redis) and the NB201 table ($NAS_DATA_DIR or $NAS_NB201_CSV).",
)
    p.add_argument("--quick", action="store_true",
                   help="a small run (4 clients, 1 job each, budget 5, 150 fuzz calls per "
                        "service, no Ray workers) unless the options below say otherwise")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--clients", type=int, help="concurrent clients (default 32; quick 4)")
    p.add_argument("--jobs", type=int, help="jobs each client runs in turn (default 2; quick 1)")
    p.add_argument("--budget", type=int, help="trainings per job (default 10; quick 5)")
    p.add_argument("--fuzz-requests", type=int,
                   help="fuzzed calls per service (default 1500; quick 150)")
    p.add_argument("--workers", type=int,
                   help="start the service with this many Ray workers and fuzz its "
                        "TrialReport service too (default 1; quick 0)")
    p.add_argument("--max-running", type=int, default=4, help="the service's --max-running (4)")
    p.add_argument("--seed", type=int, default=0, help="fuzzer and job seeds (0)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11",
                   help="Redis for the job store and the shard's checkpoints (keys under a "
                        "fresh nas-load-* prefix, deleted afterwards)")
    p.add_argument("--job-timeout", type=float, default=600.0,
                   help="seconds a watcher waits for its job to end")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    defaults = ({"clients": 4, "jobs": 1, "budget": 5, "fuzz_requests": 150, "workers": 0}
                if args.quick else
                {"clients": 32, "jobs": 2, "budget": 10, "fuzz_requests": 1500, "workers": 1})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("clients", "jobs", "budget", "fuzz_requests"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; the numbers (also written to BENCHMARKS.md unless --no-write)."""
    args = parse_args(argv)
    command = "python -m bench.load " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    report = run(args)
    text = render(report, command.strip())
    print(text)
    if args.json:
        import json

        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    if not args.no_write:
        write_section("load", text)
    return report


if __name__ == "__main__":
    main()
