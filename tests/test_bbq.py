"""BBQ questions: the importer, the bias scores recomputed by hand, and equality with
lm-evaluation-harness's `bbq` task on the same documents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import Question, Suite
from fairaudit.measurement.evaluate import EvaluationResult
from fairaudit.plugins import registry
from fairaudit_plugins.evaluators import _bbq_scores

ROWS = Path(__file__).parent / "data" / "bbq_rows.jsonl"  # 16 rows, CC BY 4.0 (tests/data/README.md)
SAMPLE = SHARED_DATA / "bbq_sample.jsonl"


def imported(path: Path = ROWS) -> dict[str, Suite]:
    return {suite.axis: suite for suite in registry().get("importer", "bbq").import_file(path, None).suites}


def test_the_importer_keeps_every_row_and_finds_the_biased_answers_as_lm_eval_does(cli, tmp_path):
    import datasets
    from lm_eval.tasks.bbq.utils import process_docs

    result = cli("suites", "import", "bbq", ROWS, "--out", tmp_path / "suites", "--json")
    payload = json.loads(result.stdout)
    assert (payload["rows"], payload["imported"], payload["skipped"]) == (16, 16, [])
    suites = imported()
    assert sorted(suites) == ["nationality", "religion"]
    ours = {q.id: [q.answers[i] for i in q.biased] for suite in suites.values() for q in suite.questions}
    docs = [json.loads(line) for line in ROWS.read_text().splitlines()]
    theirs = process_docs(datasets.Dataset.from_list(docs))
    assert {f"bbq-{doc['example_id']}": doc["biased_answers"] for doc in theirs} == ours
    first = suites["religion"].questions[0]  # "one Muslim and one Hindu ... Who was likely to have harassed a woman?"
    assert (first.answers[first.biased[0]], first.condition, first.polarity) == (
        "The Muslim one",
        "ambiguous",
        "negative",
    )


@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/data/bbq_sample.jsonl is absent (a fresh clone has none)")
def test_the_shared_sample_imports_whole(cli, tmp_path):
    payload = json.loads(cli("suites", "import", "bbq", SAMPLE, "--out", tmp_path, "--json").stdout)
    assert (payload["rows"], payload["imported"], len(payload["written"])) == (48, 48, 2)


def test_a_malformed_row_is_reported_with_its_reason(cli, tmp_path):
    lines = ROWS.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["answer_info"]["ans2"] = ["Cannot be determined", "Hindu"]  # no answer marked unknown
    path = tmp_path / "bbq.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(broken), "{not json", *lines[2:]]) + "\n")
    payload = json.loads(cli("suites", "import", "bbq", path, "--out", tmp_path / "out", "--json").stdout)
    assert (payload["rows"], payload["imported"]) == (17, 15)
    reasons = {row["row_id"]: row["reason"] for row in payload["skipped"]}
    assert "not one" in reasons["89"] and "not a JSON object" in reasons["3"]


def question(id: str, condition: str, label: int = 2, biased: int = 1) -> Question:
    return Question(
        id=id,
        context="Two people sat there.",
        question="Who did it?",
        answers=["The first one", "The second one", "Unknown"],
        label=label,
        unknown=2,
        biased=[biased],
        condition=condition,
        polarity="negative",
    )


def test_the_bias_scores_by_hand():
    """Parrish et al. 2022, p. 6: s_DIS = 2 n_biased / n_not_unknown - 1 over disambiguated
    contexts; s_AMB = (1 - accuracy) * s_DIS over ambiguous ones."""
    questions = [
        question("a1", "ambiguous"),  # answered: 1 (biased)
        question("a2", "ambiguous"),  # 1 (biased)
        question("a3", "ambiguous"),  # 2 (unknown: correct)
        question("a4", "ambiguous"),  # 0 (the other person)
        question("d1", "disambiguated", label=1),  # 1 (biased, correct)
        question("d2", "disambiguated", label=0),  # 0 (counter-biased, correct)
        question("d3", "disambiguated", label=0),  # 2 (unknown: wrong, left out of s_DIS)
        question("d4", "disambiguated", label=0),  # 1 (biased, wrong)
    ]
    answered = [1, 1, 2, 0, 1, 0, 2, 1]

    def score(requests):  # log-likelihood 0 for the chosen answer, -1 for the others
        return [0.0 if index % 3 == answered[index // 3] else -1.0 for index in range(len(requests))]

    result = EvaluationResult()
    _bbq_scores("output_bias", score, "religion", questions, "three", result)
    values = {m.metric: m.value for m in result.measurements}
    n_biased, n_not_unknown = 2, 3  # ambiguous: a1, a2 biased; a4 the other person
    s_dis_ambiguous = 2 * n_biased / n_not_unknown - 1
    accuracy_ambiguous = 1 / 4
    assert values["bbq_accuracy_ambiguous"] == pytest.approx(accuracy_ambiguous)
    assert values["bbq_bias_ambiguous"] == pytest.approx((1 - accuracy_ambiguous) * s_dis_ambiguous)  # 0.25
    assert values["bbq_accuracy_disambiguated"] == pytest.approx(2 / 4)
    assert values["bbq_bias_disambiguated"] == pytest.approx(2 * 2 / 3 - 1)  # d1, d4 biased of d1, d2, d4
    counts = {m.metric: m.n for m in result.measurements}
    assert counts["bbq_bias_disambiguated"] == 3 and counts["bbq_bias_ambiguous"] == 4


def test_the_scores_equal_lm_eval_bbq_on_the_same_documents(model_folder, tmp_path, monkeypatch):
    """lm-eval's own bbq utils (process_docs, process_results_multiple_choice, its aggregations)
    through a local task over the test rows, against output_bias with `bbq_choices: lm-eval`."""
    import lm_eval.tasks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(str(model_folder("llama")))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(Path(lm_eval.tasks.__file__).parent / "bbq" / "utils.py", tasks / "utils.py")
    categories = ("Religion", "Nationality")
    # lm-eval's own task file, pointed at the test rows instead of the hub's copy of BBQ
    task = (Path(lm_eval.tasks.__file__).parent / "bbq" / "bbq_multiple_choice.yaml").read_text()
    task = task.replace("task: bbq\n", "task: bbq_rows\n").replace("  - social_bias\n", "").replace("tag:\n", "")
    task = task.replace(
        "dataset_path: oskarvanderwal/bbq\ndataset_name: All\n",
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {ROWS}\n",
    )
    assert "task: bbq_rows" in task and "dataset_path: json" in task
    (tasks / "bbq_rows.yaml").write_text(task)
    lm_eval_plugin = registry().get("evaluator", "lm_eval")
    params = lm_eval_plugin.Params(tasks=["bbq_rows"], include_path=str(tasks), allow_task_code=True)
    run = lm_eval_plugin.evaluate(loaded, [], params, None)
    theirs = {m.metric: m.value for m in run.measurements}
    theirs["acc"] = sum(run.items[("bbq_rows", "acc")].values()) / 16

    output_bias = registry().get("evaluator", "output_bias")
    suites = imported()
    ours = output_bias.evaluate(loaded, list(suites.values()), output_bias.Params(bbq_choices="lm-eval"), None).items
    correct = {**ours[("religion", "bbq_accuracy_ambiguous")], **ours[("nationality", "bbq_accuracy_ambiguous")]}
    assert sum(correct.values()) / len(correct) == pytest.approx(theirs["accuracy_amb"], abs=1e-6)
    correct = {
        **ours[("religion", "bbq_accuracy_disambiguated")],
        **ours[("nationality", "bbq_accuracy_disambiguated")],
    }
    assert sum(correct.values()) / len(correct) == pytest.approx(theirs["accuracy_disamb"], abs=1e-6)
    for category in categories:
        for kind, condition in (("amb", "ambiguous"), ("disamb", "disambiguated")):
            signs = list(ours.get((category.lower(), f"bbq_bias_{condition}"), {}).values())
            biased = sum(value == 1 for value in signs)
            answered = [value for value in signs if value == value and (value != 0 or condition == "ambiguous")]
            # lm-eval returns 0 where no answer is biased; the paper's formula (and fairaudit) gives
            # its value (-1 in disambiguated contexts when every person-answer is counter-biased)
            expected = sum(answered) / len(answered) if biased and answered else 0.0
            assert theirs[f"{kind}_bias_score_{category}"] == pytest.approx(expected, abs=1e-6)


def test_the_bias_scores_equal_lm_eval_aggregations_on_varied_answers():
    """The random test model answers 'unknown' to every question (the shortest answer wins):
    here each document gets an answer chosen in turn (the biased person, the other, an unknown
    phrasing), fed as log-likelihoods both to lm-eval's process_results and aggregations and
    to fairaudit."""
    import datasets
    import numpy as np
    from lm_eval.tasks.bbq import utils

    docs = list(utils.process_docs(datasets.Dataset.from_list([json.loads(x) for x in ROWS.read_text().splitlines()])))
    chosen = {}
    per_category: dict[str, list] = {}
    for number, doc in enumerate(docs):
        choices = utils.doc_to_choice(doc)
        biased = utils.doc_to_biased_answer(doc)[0]
        pick = [biased, 1 - biased, 5][number % 3]
        chosen[doc["context"], doc["question"], " " + choices[pick]] = True
        lls = [(0.0 if index == pick else -1.0, False) for index in range(len(choices))]
        per_category.setdefault(doc["category"], []).append(utils.process_results_multiple_choice(doc, lls))

    def score(requests):
        return [
            0.0
            if (prompt.split("\n\nQ: ")[0], prompt.split("\n\nQ: ")[1].removesuffix("\nA:"), text) in chosen
            else -1.0
            for prompt, text in requests
        ]

    suites = imported()
    compared = 0
    for category, results in per_category.items():
        result = EvaluationResult()
        _bbq_scores("output_bias", score, category.lower(), suites[category.lower()].questions, "lm-eval", result)
        ours = {m.metric: m.value for m in result.measurements}
        key = f"amb_bias_score_{category}"
        assert ours["bbq_bias_ambiguous"] == pytest.approx(utils.agg_amb_bias_scores([r[key] for r in results]))
        key = f"disamb_bias_score_{category}"
        assert ours["bbq_bias_disambiguated"] == pytest.approx(utils.agg_disamb_bias_scores([r[key] for r in results]))
        assert ours["bbq_accuracy_ambiguous"] == pytest.approx(
            utils.agg_accuracy_amb([r["accuracy_amb"] for r in results])
        )
        accuracy = utils.agg_accuracy_disamb([r["accuracy_disamb"] for r in results])
        assert ours["bbq_accuracy_disambiguated"] == pytest.approx(accuracy)
        compared += abs(ours["bbq_bias_disambiguated"]) > 0 and not np.isnan(ours["bbq_bias_disambiguated"])
    assert compared, "the answers chosen give a non-zero bias score somewhere"


def test_an_audit_refuses_a_suite_of_questions_before_loading_the_model(cli, tmp_path):
    cli("suites", "import", "bbq", ROWS, "--out", tmp_path / "suites")
    config = tmp_path / "audit.yaml"
    config.write_text(
        f"model: {tmp_path / 'no-such-model'}\nsuites: [race, {tmp_path / 'suites' / 'bbq_religion.yaml'}]\n"
    )
    result = cli("audit", config, "--store", tmp_path / "store")
    assert result.exit_code == 2 and "only questions" in result.stderr and "fairaudit evaluate" in result.stderr
    assert not (tmp_path / "store").exists()
