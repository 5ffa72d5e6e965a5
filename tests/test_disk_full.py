"""A disk that fills (or a store that cannot be written): a clear error, exit status 2,
nothing partial, and what was written before is intact."""

from __future__ import annotations

import errno

import pyarrow.parquet as pq
import pytest

from fairaudit.errors import StoreError
from fairaudit.store import Store


def test_audit_stops_cleanly_when_the_disk_fills(cli, llama_folder, tmp_path, monkeypatch):
    real_write = pq.write_table
    calls = {"count": 0}

    def filling_disk(table, where, **kwargs):
        calls["count"] += 1
        if calls["count"] > 3:  # the first axis' three tables fit; the next write does not
            with open(where, "wb") as handle:
                handle.write(b"PAR1 half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", filling_disk)
    store = tmp_path / "store"
    result = cli("probe", "--model", llama_folder, "--suite", "race", "--suite", "gender", "--store", store, "--quiet")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: could not write") and "No space left on device" in result.stderr
    assert "Nothing partial was left" in result.stderr and "--resume" in result.stderr
    monkeypatch.setattr(pq, "write_table", real_write)
    parts = sorted(store.rglob("*.parquet"))
    assert [p.parts[-3] for p in parts] == ["axis=race"] * 3, "only the first axis, complete"
    for part in parts:
        pq.read_table(part)
    assert not [p for p in store.rglob("*") if ".tmp-" in p.name]
    record = Store(store).runs()[0]
    assert record["status"] == "failed" and "No space left" in record["error"]


def test_unwritable_store_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    import pyarrow as pa

    with pytest.raises(StoreError, match="could not write"):
        Store(blocker / "store").write_part("neuron_scores", "m", "race", "r", pa.table({"x": [1]}))
