"""An audit bundle: one zip a reviewer can check later against the weights, suites and code.

```
audit.zip
  manifest.json          sha256 of every other file, the weights hash, fairaudit and plugin versions
  report.html            the report, rendered from the store
  report.json            its numbers
  run.json               the run record, as stored
  prune-run.json         the record of the run's pruning (when it pruned)
  policy.yaml            the policy the verdicts use (when there is one)
  suites/AXIS.yaml       each suite as used (from the run record)
  tables/TABLE/...       every Parquet part of the run in the store, paths as in the store
```

The bundle is deterministic: the same stored run gives a byte-identical manifest (and zip):
entries are sorted, timestamps fixed, nothing in it records when it was made.
`verify_bundle` recomputes every hash without extracting anything to disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import fairaudit
from fairaudit.compliance.policy import Policy, stored_policy
from fairaudit.errors import ConfigError, StoreError
from fairaudit.store import Store, atomic_write_bytes, safe_name

MANIFEST = "manifest.json"
FORMAT = "fairaudit-bundle/1"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 2 << 30  # a bundle holds tables of one run, not models


def _canonical(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_parts(store: Store, run_id: str) -> dict[str, bytes]:
    """Every complete Parquet part of `run_id` in the store, keyed by its path in the bundle."""
    folder = f"run_id={safe_name(run_id)}"
    parts = {}
    for path in sorted(store.root.glob(f"*/**/{folder}/*.parquet")):
        relative = path.relative_to(store.root)
        if relative.parts[0] != "runs" and not any(part.startswith(".") for part in relative.parts):
            parts[f"tables/{relative.as_posix()}"] = path.read_bytes()
    return parts


def bundle_files(store: Store, run_id: str, policy: Policy | None = None) -> dict[str, bytes]:
    """The files of a run's bundle (manifest included), by path."""
    from fairaudit.reporting.report import render_report_text, report_data

    record = store.verify(run_id)
    if record.get("kind", "audit") != "audit" or record.get("status") != "complete":
        raise StoreError(
            f"run {run_id} is not a complete audit run (kind {record.get('kind', 'audit')}, status "
            f"{record.get('status')}); a bundle is made of a complete audit."
        )
    policy = policy or stored_policy(record)
    html, twin = render_report_text(report_data(store, run_id, policy=policy))
    files: dict[str, bytes] = {
        "report.html": html.encode(),
        "report.json": twin.encode(),
        "run.json": store.run_path(run_id).read_bytes(),
    }
    prune_run = record.get("prune", {}).get("run_id")
    if prune_run and store.run_path(prune_run).exists():
        files["prune-run.json"] = store.run_path(prune_run).read_bytes()
        files.update(_run_parts(store, prune_run))
    if policy is not None:
        files["policy.yaml"] = yaml.safe_dump(
            policy.model_dump(mode="json"), sort_keys=False, allow_unicode=True
        ).encode()
    for axis, entry in record.get("suites", {}).items():
        files[f"suites/{safe_name(axis)}.yaml"] = yaml.safe_dump(
            entry.get("definition"), sort_keys=False, allow_unicode=True
        ).encode()
    files.update(_run_parts(store, run_id))
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "model_id": record.get("model_id"),
        "weights_hash": record.get("model", {}).get("weights_hash"),
        "pruned_model": record.get("prune", {}).get("out"),
        "fairaudit_version": record.get("environment", {}).get("fairaudit"),
        "bundled_by": fairaudit.__version__,
        "environment": {k: v for k, v in record.get("environment", {}).items() if k != "host"},
        "plugins": sorted(
            (
                {k: entry.get(k) for k in ("kind", "name", "distribution", "version")}
                for entry in record.get("plugins", [])
            ),
            key=lambda entry: (entry["kind"], entry["name"]),
        ),
        "suites": {axis: entry.get("sha256") for axis, entry in record.get("suites", {}).items()},
        "policy": {"name": policy.policy, "sha256": policy.sha256()} if policy else None,
        "files": {path: _sha256(data) for path, data in sorted(files.items())},
    }
    files[MANIFEST] = _canonical(manifest)
    return files


def write_bundle(
    store: Store, run_id: str, out: str | Path, policy: Policy | None = None, force: bool = False
) -> tuple[Path, str]:
    """Write the bundle zip atomically; return its path and the manifest's sha256."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not force):
        raise ConfigError(f"{out} already exists; choose a new file name (or pass --force to replace it).")
    if out.exists() and not out.is_file():
        raise ConfigError(f"{out} is not a file; --out names the bundle zip to write.")
    files = bundle_files(store, run_id, policy)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[path])
    atomic_write_bytes(out, buffer.getvalue())
    return out, _sha256(files[MANIFEST])


@dataclass
class Verification:
    """What `verify_bundle` found; `ok` when nothing differs."""

    manifest_sha256: str = ""
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_MEMBER_BYTES:
        raise ConfigError(
            f"bundle member {info.filename} declares {info.file_size:,} bytes; a bundle member is at most "
            f"{MAX_MEMBER_BYTES:,}. This is not a fairaudit bundle."
        )
    digest_source = archive.open(info)
    chunks, total = [], 0
    for chunk in iter(lambda: digest_source.read(1 << 20), b""):
        total += len(chunk)
        if total > MAX_MEMBER_BYTES:
            raise ConfigError(f"bundle member {info.filename} expands past {MAX_MEMBER_BYTES:,} bytes; refusing it.")
        chunks.append(chunk)
    return b"".join(chunks)


def verify_bundle(path: str | Path, model: Any = None, expect_manifest: str | None = None) -> Verification:
    """Recompute every hash of a bundle (and the weights hash when `model` is given: a model id,
    folder or ModelSpec); say exactly what differs. Nothing is extracted to disk."""
    path = Path(path)
    result = Verification()
    if not path.is_file():
        raise ConfigError(f"bundle {path} does not exist or is not a file.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(
            f"{path} is not a readable zip file ({exc}); a bundle is written by 'fairaudit bundle'."
        ) from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise ConfigError(f"bundle {path} has {len(members):,} members; a bundle has at most {MAX_MEMBERS:,}.")
        names = [info.filename for info in members]
        if MANIFEST not in names:
            raise ConfigError(f"bundle {path} has no {MANIFEST}; it was not written by 'fairaudit bundle'.")
        contents: dict[str, bytes] = {}
        for info in members:
            try:
                contents[info.filename] = _read_member(archive, info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # a corrupt member (CRC, truncation)
                result.problems.append(f"{info.filename}: cannot be read from the zip ({exc})")
    raw_manifest = contents.get(MANIFEST, b"")
    result.manifest_sha256 = _sha256(raw_manifest)
    try:
        manifest = json.loads(raw_manifest)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no 'files' mapping")
    except ValueError as exc:
        result.problems.append(f"{MANIFEST}: not a fairaudit manifest ({exc})")
        return result
    result.manifest = manifest
    if _canonical(manifest) != raw_manifest:
        result.problems.append(f"{MANIFEST}: was edited (its bytes are not the canonical form fairaudit writes)")
    if expect_manifest and expect_manifest.lower() != result.manifest_sha256:
        result.problems.append(f"{MANIFEST}: sha256 is {result.manifest_sha256}, expected {expect_manifest.lower()}")
    for name, expected in sorted(manifest["files"].items()):
        if name not in contents:
            result.problems.append(f"{name}: listed in the manifest but missing from the bundle")
            continue
        result.checked += 1
        actual = _sha256(contents[name])
        if actual != expected:
            result.problems.append(f"{name}: sha256 {actual} differs from the manifest's {expected}")
    for name in sorted(set(contents) - set(manifest["files"]) - {MANIFEST}):
        result.problems.append(f"{name}: in the bundle but not in the manifest")
    try:
        recorded = json.loads(contents.get("run.json", b"{}")).get("model", {}).get("weights_hash")
    except ValueError:
        recorded = None
    if recorded != manifest.get("weights_hash"):
        result.problems.append(
            f"run.json: weights hash {recorded} differs from the manifest's {manifest.get('weights_hash')}"
        )
    if model is not None:
        from fairaudit.inputs.model import load_model

        loaded = load_model(model)
        if loaded.provenance["weights_hash"] != manifest.get("weights_hash"):
            result.problems.append(
                f"model {loaded.model_id}: weights hash {loaded.provenance['weights_hash']} differs from the "
                f"audited weights' {manifest.get('weights_hash')}"
            )
    return result
