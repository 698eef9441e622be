"""The Python client of the search service, over gRPC or in-process.

``SearchClient("host:port")`` talks to a server; ``SearchClient(servicer)`` calls a servicer in
this process through the same code path (an embedded service). ``token`` is sent as
``authorization: Bearer TOKEN``; in process, no token means a trusted admin of the default
tenant. ``tls_ca`` (PEM bytes) makes the channel TLS, trusting that CA. Failed calls raise the
domain errors of ``protos.errors`` (NotFoundError, InvalidArgumentError, ...), mapped back from
their status codes by the one table both ends share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from controller.service.auth import LOCAL_IDENTITY, authorize
from controller.service.export import extract_archive
from controller.service.guard import call_as
from controller.service.servicer import STATE_TO_PB, SearchServicer
from controller.service.tls import client_credentials
from protos.errors import ERRORS_BY_STATUS, DeadlineExceededError, UnavailableError
from protos.rpc import CHANNEL_OPTIONS, error_from_rpc
from protos.v1 import search_pb2 as sp
from protos.v1 import search_pb2_grpc as sp_grpc

ENDED = (sp.JOB_STATE_SUCCEEDED, sp.JOB_STATE_FAILED, sp.JOB_STATE_CANCELLED)


class _LocalContext:
    """What a servicer method needs of a ServicerContext, for calls in this process."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise ERRORS_BY_STATUS.get(code.name, RuntimeError)(details)

    def time_remaining(self) -> float | None:
        return None

    def is_active(self) -> bool:
        return True  # a caller that stops iterating closes the generator instead


class _InProcessStub:
    """Calls ``servicer``'s methods as a stub would call the server's."""

    def __init__(self, servicer: SearchServicer, token: str | None) -> None:
        self._servicer = servicer
        self._token = token

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._servicer, name)

        def call(request: Any, timeout: float | None = None, **_: Any) -> Any:
            identity = (LOCAL_IDENTITY if self._token is None
                        else authorize(self._servicer.tokens, name, self._token))
            return call_as(identity, name, method, request, _LocalContext())

        return call


class SearchClient:
    """Submit, inspect and cancel search jobs."""

    def __init__(self, target: str | SearchServicer, timeout: float = 30.0,
                 token: str | None = None, tls_ca: bytes | None = None,
                 tls_cert: bytes | None = None, tls_key: bytes | None = None) -> None:
        self.timeout = timeout
        self._channel: grpc.Channel | None = None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        if isinstance(target, str):
            self._channel = (grpc.secure_channel(target, client_credentials(tls_ca, tls_cert,
                                                                            tls_key),
                                                 options=CHANNEL_OPTIONS)
                             if tls_ca or tls_cert else
                             grpc.insecure_channel(target, options=CHANNEL_OPTIONS))
            self._stub: Any = sp_grpc.SearchServiceStub(self._channel)
        else:
            self._stub = _InProcessStub(target, token)

    def close(self) -> None:
        """Close the channel (if any)."""
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout,
                                               metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def submit(self, spec: sp.SearchSpec) -> str:
        """Start a job; its id."""
        return str(self._call("SubmitSearch", sp.SubmitSearchRequest(spec=spec)).job_id)

    def get(self, job_id: str) -> sp.Job:
        """One job."""
        job: sp.Job = self._call("GetSearch", sp.GetSearchRequest(job_id=job_id))
        return job

    def list_page(self, state: str | None = None, tenant: str | None = None,
                  page_size: int = 100, page_token: str = "") -> tuple[list[sp.Job], str]:
        """One page of jobs, newest first (``state``: PENDING, RUNNING, ...), and the next
        page's token ("" after the last)."""
        reply = self._call("ListSearches", sp.ListSearchesRequest(
            state=STATE_TO_PB[state] if state else sp.JOB_STATE_UNSPECIFIED,
            tenant=tenant or "", page_size=page_size, page_token=page_token))
        return list(reply.jobs), str(reply.next_page_token)

    def list(self, state: str | None = None, tenant: str | None = None,
             limit: int | None = None, page_size: int = 100) -> list[sp.Job]:
        """Jobs, newest first: the first ``limit`` (None: all, page by page)."""
        jobs: list[sp.Job] = []
        token = ""
        while limit is None or len(jobs) < limit:
            size = page_size if limit is None else min(page_size, limit - len(jobs))
            page, token = self.list_page(state, tenant, size, token)
            jobs.extend(page)
            if not token:
                break
        return jobs

    def cancel(self, job_id: str, reason: str = "") -> sp.Job:
        """Stop a job before its next training."""
        job: sp.Job = self._call("CancelSearch",
                                 sp.CancelSearchRequest(job_id=job_id, reason=reason))
        return job

    def trials(self, job_id: str, status: str | None = None,
               page_size: int = 100) -> Iterator[sp.TrialRecord]:
        """Every trial of a job (page by page), in the order they started."""
        token = ""
        while True:
            page = self._call("ListTrials", sp.ListTrialsRequest(
                job_id=job_id, status=status or "", page_size=page_size, page_token=token))
            yield from page.trials
            token = page.next_page_token
            if not token:
                return

    def best(self, job_id: str, top_k: int | None = None, pareto: bool = False,
             objectives: Sequence[str] = ()) -> tuple[sp.TrialRecord, ...]:
        """The top-k (default 1) trained architectures of a job, best first; with ``pareto``
        the Pareto front (max accuracy, min each of ``objectives``, default params: all of it
        unless ``top_k``), best accuracy first."""
        if top_k is None:
            top_k = 0 if pareto else 1
        reply = self._call("GetBest", sp.GetBestRequest(job_id=job_id, top_k=top_k,
                                                        pareto=pareto,
                                                        objectives=list(objectives)))
        return tuple(reply.trials)

    def watch(self, job_id: str, after_seq: int = 0,
              reconnect_for: float = 0.0) -> Generator[sp.SearchEvent, None, None]:
        """The job's events numbered above ``after_seq`` until its final state event. A stream
        broken by UNAVAILABLE (the service restarting) is resumed after the last event
        received, for up to ``reconnect_for`` seconds of failing attempts."""
        broken_at: float | None = None
        while True:
            stream = self._stub.WatchSearch(sp.WatchSearchRequest(job_id=job_id,
                                                                  after_seq=after_seq),
                                            metadata=self._metadata)
            try:
                for event in stream:
                    broken_at = None
                    after_seq = event.seq
                    yield event
                return
            except grpc.RpcError as exc:
                err = error_from_rpc(exc)
                broken_at = broken_at if broken_at is not None else time.monotonic()
                if not isinstance(err, UnavailableError) or \
                        time.monotonic() - broken_at > reconnect_for:
                    raise err from None
            finally:
                _close(stream)
            time.sleep(0.2)

    def export(self, job_id: str, to: Path, top_k: int = 1) -> tuple[Path, ...]:
        """Download the bundles of the job's top-k trained architectures into ``to``; their
        directories."""
        stream = self._stub.ExportBest(sp.ExportBestRequest(job_id=job_id, top_k=top_k),
                                       metadata=self._metadata)
        try:
            return tuple(extract_archive((chunk.data for chunk in stream), to))
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            _close(stream)

    def wait(self, job_id: str, timeout: float, poll: float = 0.2) -> sp.Job:
        """The job once it has ended; DeadlineExceededError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.state in ENDED:
                return job
            if time.monotonic() > deadline:
                raise DeadlineExceededError(f"job {job_id} still {sp.JobState.Name(job.state)} "
                                            f"after {timeout:g} s")
            time.sleep(poll)


def _close(stream: Any) -> None:
    """End a stream the caller stopped reading: cancel the call, or close the local generator."""
    stop = getattr(stream, "cancel", None) or getattr(stream, "close", None)
    if stop is not None:
        stop()
