"""Reading an offline W&B run back (wandb 0.31 has no Python reader: its Go core reads the transaction log)."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    pass




# ------------------------------------------------------------------------------------ reading offline runs
@dataclass
class OfflineRun:
    """What an offline W&B run file holds: run metadata, config, summary, history rows and artifacts.

    ``artifacts`` are every artifact record (name, type, digest, metadata, files, aliases, ``user_created``,
    ``use_after_commit``); :attr:`logged` are the run's outputs, :attr:`used` its inputs (what ``use_artifact``
    records: a local artifact committed and then used, or a ``use_artifact`` record of an online run).
    """

    run_id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def logged(self) -> list[dict[str, Any]]:
        return [a for a in self.artifacts if not a["use_after_commit"] and not a.get("use_record")]

    @property
    def used(self) -> list[dict[str, Any]]:
        return [a for a in self.artifacts if a["use_after_commit"] or a.get("use_record")]


def read_offline_run(run_dir: str | os.PathLike) -> OfflineRun:
    """Parse the ``run-*.wandb`` file of an offline run directory without network.

    The records are decoded with wandb's own protobuf definitions (``wandb.proto.wandb_internal_pb2``); the file's
    framing (LevelDB-style log blocks) is read here because wandb 0.31 ships no Python reader
    (``wandb.sdk.internal.datastore`` is gone; only its Go core reads these files, for ``wandb sync``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out = OfflineRun()
    for data in _log_records(files[0].read_bytes()):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.run_id, out.group, out.job_type, out.name, out.project = (
                r.run_id, r.run_group, r.job_type, r.display_name, r.project)
            out.config.update(_items(r.config.update))
        elif kind == "config":
            out.config.update(_items(record.config.update))
        elif kind == "summary":
            out.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            a = record.artifact
            out.artifacts.append({"name": a.name, "type": a.type, "digest": a.digest,
                                  "metadata": json.loads(a.metadata or "{}"),
                                  "files": [e.path for e in a.manifest.contents], "aliases": list(a.aliases),
                                  "user_created": a.user_created, "use_after_commit": a.use_after_commit})
        elif kind == "use_artifact":
            u = record.use_artifact
            out.artifacts.append({"name": u.name, "type": u.type, "digest": "", "metadata": {}, "files": [],
                                  "aliases": [], "user_created": False, "use_after_commit": False,
                                  "use_record": True, "id": u.id})
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _items(items: Any) -> dict[str, Any]:
    values = {}
    for item in items:
        value = json.loads(item.value_json)
        values[_key(item)] = value.get("value", value) if isinstance(value, dict) and set(value) <= {"value", "desc"} else value
    return values


def _log_records(raw: bytes) -> list[bytes]:
    """Records of W&B's transaction log: a 7-byte header, then LevelDB-style chunks in 32 KiB blocks."""
    block, pos, chunks, records = 32768, 7, [], []
    if raw[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunks.append(raw[pos:pos + length])
        pos += length
        if kind in (1, 4):  # FULL or LAST
            records.append(b"".join(chunks))
            chunks = []
    return records
