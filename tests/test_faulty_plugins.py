"""Faulty third-party plugins: one that raises, returns the wrong type, or hangs is named in
the error (and, for evaluators, in the store and the report); stored results are kept."""

from __future__ import annotations

import time

import pyarrow.dataset as ds
import pytest
from pydantic import BaseModel

from fairaudit.config import RunConfig
from fairaudit.errors import PluginError
from fairaudit.hookspecs import hookimpl
from fairaudit.pipeline.audit import audit
from fairaudit.plugins import register_plugin, unregister_plugin
from fairaudit.store import Store


class NoParams(BaseModel):
    pass


class ExplodesOnGender:
    name = "explodes_on_gender"
    description = "raises on the gender axis"
    Params = NoParams

    def compute(self, stats, loaded, scores, params):
        if stats.axis == "gender":
            raise ZeroDivisionError("bad luck")
        scores.neuron["fine"] = scores.neuron["bias"] * 2


class WrongShape:
    name = "wrong_shape"
    description = "writes a column of the wrong shape"
    Params = NoParams

    def compute(self, stats, loaded, scores, params):
        scores.neuron["broken"] = [1, 2, 3]


class Sleeper:
    name = "sleeper"
    description = "hangs"
    requires_causal = False
    Params = NoParams

    def evaluate(self, loaded, suites, params, reference=None):
        time.sleep(30)


class Faulty:
    @hookimpl
    def register_scorers(self, register):
        register(ExplodesOnGender())
        register(WrongShape())

    @hookimpl
    def register_evaluators(self, register):
        register(Sleeper())


@pytest.fixture(autouse=True)
def faulty():
    register_plugin(Faulty(), name="faulty-plugins")
    yield
    unregister_plugin("faulty-plugins")


def config(model, root, **overrides) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": str(model),
            "suites": ["race", "gender"],
            "store": str(root / "store"),
            "probe": {"plugin": "activations", "params": {"progress": False}},
            "pruning": None,
            "evaluators": [],
            "report": False,
            **overrides,
        }
    )


def test_raising_scorer_is_named_and_earlier_axes_are_kept(llama_folder, tmp_path):
    with pytest.raises(
        PluginError, match="scorer plugin 'explodes_on_gender' failed on axis 'gender': ZeroDivisionError: bad luck"
    ):
        audit(config(llama_folder, tmp_path, scoring={"scorers": ["bias", "explodes_on_gender"]}))
    store = Store(tmp_path / "store")
    record = store.runs()[0]
    assert record["status"] == "failed" and "explodes_on_gender" in record["error"]
    table = ds.dataset(tmp_path / "store" / "neuron_scores", partitioning="hive").to_table()
    assert set(table.column("axis").to_pylist()) == {"race"} and "fine" in table.column_names


def test_scorer_writing_the_wrong_type_is_named(llama_folder, tmp_path):
    with pytest.raises(PluginError, match="scorer plugin 'wrong_shape' wrote neuron column 'broken'"):
        audit(config(llama_folder, tmp_path, scoring={"scorers": ["bias", "wrong_shape"]}))
    assert not (tmp_path / "store" / "neuron_scores").exists()


def test_hanging_evaluator_times_out_and_the_report_names_it(llama_folder, tmp_path):
    started = time.time()
    result = audit(
        config(
            llama_folder,
            tmp_path,
            suites=["race"],
            evaluators=["sleeper", "bias_reprobe"],
            evaluator_time_limit=1.0,
            report=True,
        )
    )
    assert time.time() - started < 25
    assert result.evaluation_failures == [
        "sleeper on before model: TimeoutError: did not finish within its time limit of 1 s (abandoned)"
    ]
    assert any(row["evaluator"] == "bias_reprobe" and not row["error"] for row in result.measurements)
    assert "sleeper on before model: TimeoutError" in result.report.read_text()
