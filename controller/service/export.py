"""ExportBest on both ends: the service writes a job's bundles (the code path of ``nas export
RUN_DIR``, fed with the job store's trials) and streams them as a tar archive in chunks; the
client extracts that archive, refusing any member that would land outside its directory.

A bundle of a trained child needs the evaluator's description (child size, normalisation,
recipe): the runner notes it in the job's journal when the job starts.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from controller.config import build_config
from controller.factory import build_space
from controller.jobs.store import JobStore
from controller.parts import Parts
from protos.errors import FailedPreconditionError

CHUNK_BYTES = 1 << 20  # far below the message limit, whatever the size of the weights


class BundleError(ValueError):
    """A run directory or bundle that cannot be exported or loaded; says what is missing."""


def top_trained(doc: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The ``k`` best distinct architectures that were actually trained (not cache hits)."""
    entries = [h for h in doc["history"] if not h["cached"] and h.get("status", "succeeded")
               == "succeeded"]
    entries.sort(key=lambda h: -h["reward"])
    return entries[:k]


def export_job(store: JobStore, parts: Parts, work_dir: Path, job_id: str, top: int,
               out: Path) -> list[Path]:
    """Write the bundles of the job's ``top`` trained architectures under ``out``;
    FailedPreconditionError when the job has no succeeded training (yet) or its files are
    gone."""
    view = store.get(job_id)
    cfg = build_config(view.spec, {"out": str(work_dir / job_id)})
    # the best index holds one trial per trained architecture; a cache hit of another job's
    # training carries that training's files, so it is exported as the training it stands for
    doc = {"history": [{**t.history_json(), "arch": t.trained_arch, "cached": False}
                       for t in store.best(job_id, top)],
           "evaluator": view.notes.get("evaluator", {})}
    if not top_trained(doc, 1):
        raise FailedPreconditionError(f"job_id: job {job_id} has no succeeded training to "
                                      f"export ({view.state})")
    try:
        return parts.write_bundles(doc, cfg, build_space(cfg), out, top)
    except BundleError as exc:
        raise FailedPreconditionError(f"job_id: job {job_id}: {exc}") from None


def export_chunks(store: JobStore, parts: Parts, work_dir: Path, job_id: str, top: int,
                  chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The job's bundles as an uncompressed tar archive (one top-level directory per bundle),
    in pieces of at most ``chunk_bytes``; nothing is left on disk once the stream ends."""
    with tempfile.TemporaryDirectory(prefix="nas-export-") as tmp:
        bundles = export_job(store, parts, work_dir, job_id, top, Path(tmp))
        with tempfile.TemporaryFile() as archive:
            with tarfile.open(fileobj=archive, mode="w") as tar:
                for bundle in bundles:
                    tar.add(bundle, arcname=bundle.name)
            archive.seek(0)
            while chunk := archive.read(chunk_bytes):
                yield chunk


def extract_archive(chunks: Iterable[bytes], dest: Path) -> list[Path]:
    """Extract the streamed archive into ``dest``; the bundle directories it holds. BundleError
    (before anything is written) for a member with an absolute path, a ``..`` part, or that is
    neither a file nor a directory."""
    with tempfile.TemporaryFile() as archive:
        for chunk in chunks:
            archive.write(chunk)
        archive.seek(0)
        return _extract(archive, dest)


def _extract(archive: IO[bytes], dest: Path) -> list[Path]:
    with tarfile.open(fileobj=archive, mode="r") as tar:
        members = tar.getmembers()
        for member in members:
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts or not (member.isfile() or
                                                                member.isdir()):
                raise BundleError(f"archive member {member.name!r}: not a plain file or "
                                  f"directory inside the export; refusing the archive")
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, members=members, filter="data")
    tops = sorted({PurePosixPath(m.name).parts[0] for m in members if m.name not in ("", ".")})
    return [dest / name for name in tops]
