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
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import fairaudit
from fairaudit.compliance.policy import Policy, stored_policy
from fairaudit.errors import ConfigError, StoreError
from fairaudit.escaping import for_terminal
from fairaudit.store import Store, atomic_write_bytes, safe_name

MANIFEST = "manifest.json"
FORMAT = "fairaudit-bundle/1"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
MAX_MEMBERS = 100_000
MAX_TOTAL_BYTES = 2 << 30  # a bundle holds tables of one run, not models
MAX_RATIO = 200  # expanded / zipped: JSON and Parquet compress far less than this


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


def _layout_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a member cannot be part of a bundle (None when it can): a bundle holds regular files
    only, under relative names without `..`, stored or deflated, unencrypted."""
    name = info.filename
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        return "its name is not a plain relative path (absolute, '..', empty or backslash components)"
    if any(not ch.isprintable() for ch in name):
        return "its name holds control characters"
    kind = (info.external_attr >> 16) & 0o170000
    if info.is_dir() or kind not in (0, stat.S_IFREG):
        return "it is not a regular file (a folder, a symlink or a device)"
    if info.flag_bits & 0x1:
        return "it is encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"it uses compression method {info.compress_type}, not stored or deflated"
    return None


def _check_sizes(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse, before reading anything, a zip that would expand past the bounds of a bundle."""
    if len(members) > MAX_MEMBERS:
        raise ConfigError(f"bundle {path} has {len(members):,} members; a bundle has at most {MAX_MEMBERS:,}.")
    total = sum(info.file_size for info in members)
    packed = sum(info.compress_size for info in members)
    if total > MAX_TOTAL_BYTES or total > MAX_RATIO * max(packed, 1 << 16):
        raise ConfigError(
            f"bundle {path} declares {total:,} bytes once expanded from {packed:,} (at most "
            f"{MAX_TOTAL_BYTES:,}, and {MAX_RATIO} times the zip); this is not a fairaudit bundle."
        )


def _member_digest(archive: zipfile.ZipFile, info: zipfile.ZipInfo, keep: bool) -> tuple[str, bytes]:
    """The sha256 of a member, read in blocks and never past its declared size; its bytes only
    when `keep` (the manifest and the run record)."""
    digest, kept, total = hashlib.sha256(), [], 0
    with archive.open(info) as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            total += len(chunk)
            if total > info.file_size:
                raise ValueError(f"expands past its declared {info.file_size:,} bytes")
            digest.update(chunk)
            if keep:
                kept.append(chunk)
    return digest.hexdigest(), b"".join(kept)


def verify_bundle(path: str | Path, model: Any = None, expect_manifest: str | None = None) -> Verification:
    """Recompute every hash of a bundle (and the weights hash when `model` is given: a model id,
    folder or ModelSpec); say exactly what differs. Nothing is extracted to disk, and members are
    hashed in blocks, after the zip's declared sizes are checked against the bounds of a bundle.
    The layout is fixed: unique names, relative paths, regular files, every member listed in the
    manifest and every listed file present."""
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
    digests: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    with archive:
        members = archive.infolist()
        _check_sizes(path, members)
        names = [info.filename for info in members]
        for name in sorted({name for name in names if names.count(name) > 1}):
            result.problems.append(
                f"{for_terminal(name)}: appears {names.count(name)} times in the zip (a bundle names each file once)"
            )
        if MANIFEST not in names:
            raise ConfigError(f"bundle {path} has no {MANIFEST}; it was not written by 'fairaudit bundle'.")
        for info in members:
            problem = _layout_problem(info)
            if problem:
                result.problems.append(f"{for_terminal(info.filename)}: not part of a bundle: {problem}")
                continue
            try:
                digests[info.filename], data = _member_digest(archive, info, info.filename in (MANIFEST, "run.json"))
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
                result.problems.append(f"{for_terminal(info.filename)}: cannot be read from the zip ({exc})")
                continue
            if data:
                contents[info.filename] = data
    raw_manifest = contents.get(MANIFEST, b"")
    result.manifest_sha256 = _sha256(raw_manifest)
    problem = _manifest_problem(raw_manifest)
    if problem:
        result.problems.append(f"{MANIFEST}: not a fairaudit manifest ({problem})")
        return result
    manifest = json.loads(raw_manifest)
    result.manifest = manifest
    if _canonical(manifest) != raw_manifest:
        result.problems.append(f"{MANIFEST}: was edited (its bytes are not the canonical form fairaudit writes)")
    if expect_manifest and expect_manifest.lower() != result.manifest_sha256:
        result.problems.append(f"{MANIFEST}: sha256 is {result.manifest_sha256}, expected {expect_manifest.lower()}")
    for name, expected in sorted(manifest["files"].items()):
        if name not in digests:
            result.problems.append(f"{for_terminal(name)}: listed in the manifest but missing from the bundle")
            continue
        result.checked += 1
        if digests[name] != expected:
            result.problems.append(
                f"{for_terminal(name)}: sha256 {digests[name]} differs from the manifest's {expected}"
            )
    for name in sorted(set(names) - set(manifest["files"]) - {MANIFEST}):
        result.problems.append(f"{for_terminal(name)}: in the bundle but not in the manifest")
    _check_weights(result, manifest, contents.get("run.json", b"{}"), model)
    return result


def _manifest_problem(raw: bytes) -> str | None:
    """What is wrong with a manifest's format (None when nothing): fairaudit's format, a non-empty
    mapping of relative names to sha256 digests."""
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"its format is not {FORMAT}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "it lists no file"
    for name, digest in files.items():
        if not isinstance(digest, str) or len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            return f"'{for_terminal(str(name))}' has no sha256 digest"
        if _layout_problem(zipfile.ZipInfo(name)) is not None or name == MANIFEST:
            return f"'{for_terminal(str(name))}' is not a plain relative file name"
    return None


def _check_weights(result: Verification, manifest: dict[str, Any], run_record: bytes, model: Any) -> None:
    """The weights hash of the run record against the manifest's, and against `model`'s when given."""
    try:
        recorded = json.loads(run_record).get("model", {}).get("weights_hash")
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
