"""Malformed suites and configs: a clear one-paragraph error, exit status 2, no output."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA, run_module

BAD_SUITES = sorted((DATA / "bad_suites").glob("*.yaml"))
BAD_CONFIGS = sorted((DATA / "bad_configs").glob("*.yaml"))

# what each message must mention, beyond the file name
SUITE_HINTS = {
    "one_group.yaml": "at least two groups",
    "undefined_placeholder.yaml": "{pronoun}",
    "duplicate_template_ids.yaml": "duplicate",
    "tabs.yaml": "tab",
    "unknown_key.yaml": "colour",
    "alias_bomb.yaml": "aliases",
    "not_utf8.yaml": "UTF-8",
    "python_object_tag.yaml": "line",
    "empty_templates.yaml": "no templates, statements, sentence_pairs, questions or scenarios",
    "identical_prompts.yaml": "same text",
    "unknown_reference.yaml": "reference",
}


def test_there_are_at_least_twenty_bad_files():
    assert len(BAD_SUITES) + len(BAD_CONFIGS) >= 20


@pytest.mark.parametrize("path", BAD_SUITES, ids=lambda p: p.name)
def test_bad_suite_is_refused_clearly(cli, path: Path):
    result = cli("suites", "validate", path)
    assert result.exit_code == 2
    message = result.stderr
    assert message.startswith("error: ") and str(path) in message
    assert "Traceback" not in result.output
    assert len(message.strip().splitlines()) == 1, "one paragraph"
    hint = SUITE_HINTS.get(path.name)
    if hint:
        assert hint in message


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=lambda p: p.name)
def test_bad_config_is_refused_before_any_output(cli, tmp_path: Path, path: Path):
    store = tmp_path / "store"
    result = cli("audit", path, "--store", store)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
    assert not store.exists(), "nothing may be written for a config that fails validation"


def test_config_errors_name_field_and_allowed_values(cli):
    message = cli("audit", DATA / "bad_configs" / "unknown_scorer.yaml").stderr
    assert "scoring.scorers.1.plugin" in message and "no_such_scorer" in message and "hybrid" in message
    message = cli("audit", DATA / "bad_configs" / "wrong_param_type.yaml").stderr
    assert "probe.params" in message and "batch_size" in message
    message = cli("audit", DATA / "bad_configs" / "unknown_key.yaml").stderr
    assert "line 1" in message and "modell" in message
    message = cli("audit", DATA / "bad_configs" / "pruning_score_not_written.yaml").stderr
    assert "pruning ranks by ['hybrid_scaled', 'importance_ppm']" in message and "pruning: null" in message


def test_fifty_megabyte_suite_is_refused_without_reading_it(cli, tmp_path: Path):
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as handle:
        handle.write(b"suite: huge\naxis: race\ndescription: '")
        handle.truncate(50 * 1024 * 1024)
    result = cli("suites", "validate", huge)
    assert result.exit_code == 2 and "MB" in result.stderr and "limit" in result.stderr


def test_missing_files_and_models_exit_2_without_traceback(tmp_path: Path):
    for args in (
        ["suites", "validate", tmp_path / "nope.yaml"],
        ["audit", tmp_path / "nope.yaml"],
        ["probe", "--model", tmp_path / "no-model", "--suite", "race", "--store", tmp_path / "s", "--quiet"],
    ):
        completed = run_module(*args)
        assert completed.returncode == 2, completed.stderr
        assert completed.stderr.startswith("error: ") and "Traceback" not in completed.stderr
    assert not (tmp_path / "s").exists()


def test_click_usage_errors_read_like_every_other_error():
    for args, message in ((["audit", "--nope"], "No such option '--nope'"), (["overlap"], "Missing argument 'STORE'")):
        completed = run_module(*args)
        assert completed.returncode == 2 and completed.stderr.startswith("error: ") and message in completed.stderr
        assert "Usage:" not in completed.stderr and len(completed.stderr.strip().splitlines()) == 1
    assert run_module("--help").returncode == 0 and run_module("--version").returncode == 0


def test_a_device_torch_cannot_name_or_this_machine_lacks_exits_2_before_loading(cli, llama_folder, tmp_path: Path):
    import torch

    devices = ["gpu", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        for command in (
            ["probe", "--suite", "race", "--store", tmp_path / "store"],
            ["evaluate", "--evaluator", "perplexity", "--store", tmp_path / "store"],
        ):
            done = cli(command[0], "--model", llama_folder, *command[1:], "--device", device)
            assert done.exit_code == 2 and f"error: device '{device}'" in done.stderr, (device, done.output)
    assert not (tmp_path / "store").exists(), "nothing is written before the model loads"


def test_nan_time_limits_and_non_positive_counts_are_refused(cli, llama_folder, tmp_path):
    refused = cli("evaluate", "--model", llama_folder, "--time-limit", "nan", "--store", tmp_path / "s")
    assert refused.exit_code == 2 and "NaN is not a number of seconds" in refused.output
    refused = cli("diagnose", "--model", llama_folder, "--suite", "race", "--top", "-1", "--out", tmp_path / "d")
    assert refused.exit_code == 2 and "--top" in refused.output


def test_an_infinite_time_limit_means_none():
    from fairaudit.pipeline.evaluation import _with_time_limit

    assert _with_time_limit(lambda: 7, float("inf")) == 7
