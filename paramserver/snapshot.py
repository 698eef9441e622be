"""The checkpoint format of one shard: an uncompressed ``.npz`` archive (no pickle) holding the
arrays and a JSON header with the scalars, so a blob is portable and safe to load.

The Adam state is torch's (step, exp_avg, exp_avg_sq), so blobs written while shards ran
``torch.optim.Adam`` restore. A layout saved before it had ``staleness_rule`` and ``replicas``
restores with their defaults (SCALE, 1)."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from protos.types import LayoutSpec, StalenessRule, UpdatePolicy

FORMAT = "nas.paramserver.shard/1"


@dataclass(frozen=True)
class ShardSnapshot:
    """Everything a shard needs to continue exactly where it stopped."""

    layout: LayoutSpec
    shard: int
    params: np.ndarray
    adam: tuple[float, np.ndarray, np.ndarray] | None  # (step, exp_avg, exp_avg_sq)
    version: int
    counters: tuple[int, int, int]  # pushes, rejected_stale, duplicates
    last_seq: Mapping[str, int]
    pending_sum: np.ndarray
    pending_count: int


def encode(snap: ShardSnapshot) -> bytes:
    """Serialize a snapshot."""
    layout = dataclasses.asdict(snap.layout)
    layout["policy"] = snap.layout.policy.value
    layout["staleness_rule"] = snap.layout.staleness_rule.value
    header = {"format": FORMAT, "layout": layout, "shard": snap.shard, "version": snap.version,
              "counters": list(snap.counters), "last_seq": dict(snap.last_seq),
              "pending_count": snap.pending_count,
              "adam_step": None if snap.adam is None else snap.adam[0]}
    arrays: dict[str, np.ndarray] = {
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        "params": snap.params.astype(np.float32), "pending_sum": snap.pending_sum}
    if snap.adam is not None:
        arrays["exp_avg"], arrays["exp_avg_sq"] = snap.adam[1], snap.adam[2]
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def decode(data: bytes) -> ShardSnapshot:
    """Parse a blob written by :func:`encode`; ValueError when it is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        header = json.loads(arrays["header"].tobytes().decode())
        if header.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {header.get('format')!r}")
        layout_fields = dict(header["layout"])
        layout_fields["policy"] = UpdatePolicy(layout_fields["policy"])
        if "staleness_rule" in layout_fields:
            layout_fields["staleness_rule"] = StalenessRule(layout_fields["staleness_rule"])
        step = header["adam_step"]
        adam = None if step is None else (float(step), arrays["exp_avg"], arrays["exp_avg_sq"])
        return ShardSnapshot(
            layout=LayoutSpec(**layout_fields), shard=int(header["shard"]),
            params=arrays["params"], adam=adam, version=int(header["version"]),
            counters=(int(header["counters"][0]), int(header["counters"][1]),
                      int(header["counters"][2])),
            last_seq={str(k): int(v) for k, v in header["last_seq"].items()},
            pending_sum=arrays["pending_sum"], pending_count=int(header["pending_count"]))
    except (ValueError, OSError, zipfile.BadZipFile, KeyError, TypeError,
            IndexError) as exc:
        raise ValueError(f"not a shard checkpoint: {exc}") from exc
