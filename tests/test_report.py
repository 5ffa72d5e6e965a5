"""The HTML report: its numbers equal the store's, hostile text is inert, it is
self-contained, and a real browser opens it offline without errors."""

from __future__ import annotations

import json
import re
import shutil
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fairaudit.config import RunConfig
from fairaudit.inputs.suite import resolve_suite
from fairaudit.pipeline.audit import audit
from fairaudit.store import Store

HOSTILE = """suite: hostile
axis: hostile
groups:
  a: {group: "<script>alert('x')</script>"}
  b: {group: "</table><b onmouseover=alert(1)>\\"quoted\\""}
templates:
  - id: t1
    text: "The {group} person said"
    continuations: {negative: " <img src=x onerror=alert(2)>", neutral: " hello"}
  - id: t2
    text: "A {group} walked by"
controls:
  - ["A tall <i>man</i>", "A short <i>man</i>"]
"""


class DataValues(HTMLParser):
    """Collects (metric, axis) -> data-value from the report's tagged cells."""

    def __init__(self):
        super().__init__()
        self.values: dict[tuple[str, str], list[str]] = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "data-metric" in attributes:
            self.values.setdefault((attributes["data-metric"], attributes.get("data-axis", "")), []).append(
                attributes.get("data-value", "")
            )


@pytest.fixture(scope="module")
def audited(model_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "hostile.yaml").write_text(HOSTILE)
    config = RunConfig.model_validate(
        {
            "model": str(model_folder("llama")),
            "suites": ["race", "gender", str(root / "hostile.yaml")],
            "store": str(root / "store"),
            "probe": {"plugin": "activations", "params": {"progress": False}},
            "pruning": {"out": str(root / "pruned"), "selection": {"fraction": 0.05}},
            "policy": "default",  # as the default audit: the gate line and its column on the first screen
            "evaluators": [
                "bias_reprobe",
                "output_bias",
                {"plugin": "random_baseline", "params": {"seeds": 2, "permutations": 200}},
                {"plugin": "generations", "params": {"pairs_per_axis": 1, "max_length": 16}},
                {"plugin": "perplexity", "params": {"max_length": 64}},
            ],
        }
    )
    result = audit(config)
    return root, result


def test_numbers_in_the_html_equal_the_store(audited):
    root, result = audited
    html = result.report.read_text(encoding="utf-8")
    parser = DataValues()
    parser.feed(html)
    store = Store(root / "store")
    for axis in ("race", "gender"):
        row = store.read("axis_summary", model=result.model_id, axis=axis, run_id=result.run_id).to_pylist()[0]
        assert float(parser.values[("bias_index", axis)][0]) == row["bias_index"]
        assert float(parser.values[("optipfair_index", axis)][0]) == row["optipfair_index"]
        change = next(
            r
            for r in store.read("comparisons", run_id=result.run_id).to_pylist()
            if (r["evaluator"], r["axis_or_task"], r["metric"]) == ("bias_reprobe", axis, "bias_index_heldout")
        )
        assert float(parser.values[("bias_index_heldout_change", axis)][0]) == change["relative_change"]
    perplexity = {
        r["role"]: r["value"]
        for r in store.read("evaluations", run_id=result.run_id).to_pylist()
        if r["metric"] == "perplexity_bundled"
    }
    assert float(parser.values[("perplexity_before", "")][0]) == perplexity["before"]
    assert float(parser.values[("perplexity_after", "")][0]) == perplexity["after"]
    assert int(parser.values[("removed", "")][0]) == store.read_run(result.run_id)["prune"]["removed"]
    random = {
        (r["axis_or_task"], r["metric"]): r["value"]
        for r in store.read("evaluations", run_id=result.run_id).to_pylist()
        if r["evaluator"] == "random_baseline" and r["role"] == "after"
    }
    for axis in ("race", "gender"):
        said = (
            "did not beat random selections" if random[(axis, "beats_random_p")] >= 0.05 else "beat random selections"
        )
        assert f"{axis}: against random neurons of the same number per layer" in html and said in html
    overlaps = sorted(r["overlap"] for r in store.read("overlap_pairs", run_id=result.run_id).to_pylist())
    assert sorted(int(v) for v in parser.values[("overlap", "")]) == overlaps
    # the first table of the summary: one row per axis, from the same stored figures
    assert html.index('id="glance"') < html.index('data-metric="bias_index"') < html.index("</details>")
    comparisons = {
        (r["axis_or_task"], r["metric"]): r for r in store.read("comparisons", run_id=result.run_id).to_pylist()
    }
    for axis in ("race", "gender"):
        preference = comparisons[(axis, "stereotype_preference")]
        assert float(parser.values[("glance_preference", axis)][0]) == preference["after"]
        assert float(parser.values[("glance_beats_random_p", axis)][0]) == random[(axis, "beats_random_p")]
        low, high = preference["abs_low"], preference["abs_high"]
        moved = "yes" if low > 0 else "no" if high < 0 else "unclear"
        assert parser.values[("glance_moved_away", axis)][0] == moved
        # the statement format, which no selection reads, beside it
        statements = comparisons[(axis, "statement_preference")]
        assert float(parser.values[("glance_statement_preference", axis)][0]) == statements["after"]
        p_value = random[(axis, "statements_beats_random_p")]
        assert float(parser.values[("glance_statements_beats_random_p", axis)][0]) == p_value
        # the random baseline compares the held-out statements (the budget is chosen on the probe ones)
        heldout = {pair.pair_id for pair in resolve_suite(axis).statement_pairs("heldout")}
        items = [
            r["value"]
            for r in store.read("evaluation_items", run_id=result.run_id).to_pylist()
            if r["metric"] == "statement_preference" and r["role"] == "before" and r["item"] in heldout
        ]
        assert len(items) == len(heldout)
        assert random[(axis, "statements_abs_output_bias_before")] == pytest.approx(abs(sum(items) / len(items)))
        questions = comparisons[(axis, "bbq_bias_ambiguous")]  # and the question format, the third
        assert float(parser.values[("glance_question_bias", axis)][0]) == questions["after"]
        moved = "yes" if questions["abs_low"] > 0 else "no" if questions["abs_high"] < 0 else "unclear"
        assert parser.values[("glance_question_moved_away", axis)][0] == moved
        assert (
            f"{axis}: against random neurons of the same number per layer, |output-level bias| in held-out statements"
            in html
        )


def test_json_twin_has_the_same_numbers(audited):
    root, result = audited
    twin = json.loads(result.report.with_suffix(".json").read_text())
    store = Store(root / "store")
    for entry in twin["summary"]:
        row = store.read("axis_summary", model=result.model_id, axis=entry["axis"], run_id=result.run_id).to_pylist()[0]
        assert entry["bias_index"] == row["bias_index"] and entry["bias_index_low"] == row["bias_index_low"]
    assert twin["prune"]["removed"] == store.read_run(result.run_id)["prune"]["removed"]
    ranking = store.read_run(result.run_id)["prune"]["ranking"]
    assert ranking.startswith("hybrid (weight 0.8) of the mean over axes race, gender, hostile of `scaled_bias`")
    shown = (
        html_escape(ranking)
        .replace("`scaled_bias`", "<code>scaled_bias</code>")
        .replace("`importance_ppm`", "<code>importance_ppm</code>")
    )
    assert twin["prune"]["ranking"] == ranking and shown in result.report.read_text(encoding="utf-8")


def test_hostile_suite_text_is_shown_as_text(audited):
    _, result = audited
    html = result.report.read_text(encoding="utf-8")
    assert "<script" not in html.lower(), "no script element at all, not even ours"
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "<b onmouseover" not in html and "&lt;/table&gt;&lt;b onmouseover=alert(1)&gt;" in html
    assert "<img" not in html and "<i>man</i>" not in html


def test_report_is_self_contained(audited):
    _, result = audited
    html = result.report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html), "no external resource"
    assert "@import" not in html and "url(" not in html
    assert html.count("<svg") >= 4
    assert "MLP divergence peaks at" in html and "-mlp-heatmap" not in html  # diagnosis figures are inline


def test_report_command_renders_a_stored_run(cli, audited, tmp_path):
    root, result = audited
    out = tmp_path / "again.html"
    completed = cli("report", root / "store", "--run", result.run_id, "--out", out)
    assert completed.exit_code == 0, completed.output
    assert out.read_text() == result.report.read_text(), "rendering only reads the store: same input, same file"
    assert (tmp_path / "again.json").exists()
    missing = cli("report", root / "store", "--run", "nope", "--out", tmp_path / "x.html")
    assert missing.exit_code == 2 and "has no run 'nope'" in missing.stderr and not (tmp_path / "x.html").exists()


def test_report_paths_stay_inside_their_folder():
    from fairaudit.reporting.report import report_path

    for model in ("../../etc/passwd", "/abs/model", "org/model\x00", "m" * 300):
        path = report_path("out", model, "../run")
        assert path.parent == Path("out") and len(path.name) < 120 and "\x00" not in path.name


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (make test installs it as root)"
)
def test_browser_opens_the_report_offline_without_errors(audited):
    sync_api = pytest.importorskip("playwright.sync_api")
    _, result = audited
    artifacts = Path(__file__).parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    console_errors, failed, external = [], [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        page.on("requestfailed", lambda request: failed.append(request.url))
        context.route(
            "**/*",
            lambda route: (
                (external.append(route.request.url), route.abort())
                if not route.request.url.startswith("file:")
                else route.continue_()
            ),
        )
        page.goto(result.report.resolve().as_uri())
        page.wait_for_load_state("load")
        sizes = page.evaluate(
            "Array.from(document.querySelectorAll('svg')).map(s => [s.getBoundingClientRect().width, s.getBoundingClientRect().height])"
        )
        page.locator("#summary").screenshot(path=str(artifacts / "report-summary.png"))
        # the per-axis table is whole on the first screen (1280 x 800), before any scrolling
        glance = page.evaluate(
            "(() => { const r = document.getElementById('glance').getBoundingClientRect(); return [r.top, r.bottom]; })()"
        )
        on_screen = page.evaluate(OVERFLOW)
        page.emulate_media(media="print")
        page.set_viewport_size({"width": 700, "height": 990})  # an A4 page's printable width at 96 dpi, 12 mm margins
        printed = page.evaluate(OVERFLOW)
        page.pdf(path=str(artifacts / "report.pdf"), format="A4")
        browser.close()
    assert console_errors == [] and failed == [] and external == []
    assert sizes and all(width > 0 and height > 0 for width, height in sizes)
    assert (artifacts / "report-summary.png").stat().st_size > 1000
    assert 0 <= glance[0] < glance[1] <= 800, f"the per-axis table must be whole on the first screen: {glance}"
    assert on_screen == {"page": 1280, "overflowing": []}, (
        "the report must read without horizontal scrolling at 1280 px"
    )
    assert printed == {"page": 700, "overflowing": []}, "the report must fit an A4 page when printed"
    assert (artifacts / "report.pdf").read_bytes().startswith(b"%PDF")


# every element wider than its box (a table that would need horizontal scrolling, a clipped figure)
OVERFLOW = """() => ({page: document.documentElement.scrollWidth, overflowing: Array.from(
    document.querySelectorAll('.scroll, table, figure, p, pre, details')).filter(e => e.scrollWidth > e.clientWidth + 1)
    .map(e => e.tagName + (e.closest('section') ? ' in #' + e.closest('section').id : '')).slice(0, 10)})"""


def test_report_prose_and_sections_read_as_a_reviewer_needs(audited):
    html = audited[1].report.read_text(encoding="utf-8")
    summary = html[
        html.index('<section id="summary">') : html.index("</section>", html.index('<section id="summary">'))
    ]
    assert "`" not in summary and "<code>scaled_bias</code>" in summary, "Markdown code spans are set as <code>"
    diagnosis = html[html.index('<section id="diagnosis">') :]
    diagnosis = diagnosis[: diagnosis.index("</section>")]
    assert diagnosis.count("<details>") >= 1 and diagnosis.index("<details>") < diagnosis.index("<svg"), (
        "per-axis figures are collapsed"
    )
    assert "Ġ" not in html
    layers = html[html.index('<section id="layers">') :]
    assert "bars show 95% intervals" in layers[: layers.index("</section>")]


def test_facts_verdict_names_every_metric_whose_interval_excludes_no_change():
    from fairaudit.reporting.sections import _facts_verdict

    def row(task, metric, relative, low, high, change=-0.3):
        return {
            "axis_or_task": task,
            "metric": metric,
            "relative_change": relative,
            "relative_low": low,
            "relative_high": high,
            "change": change,
            "change_low": change - 0.1,
            "change_high": change + 0.1,
            "items": 50,
        }

    line = _facts_verdict(
        [
            row("", "fact_accuracy", 0.0, -0.02, 0.02, 0.0),
            row("", "fact_logprob", 0.14, 0.107, 0.183),
            row("kinship", "fact_accuracy", -0.2, -0.3, -0.1),
            row("capitals", "fact_accuracy", 0.0, -0.1, 0.1),
        ]
    )
    assert "accuracy on facts that depend on a demographic word did not change measurably" in line
    assert "the mean log-probability of the correct answer fell by 0.3000 nats" in line
    assert "(kinship) fell by 20.0%" in line and "capitals" not in line


def test_verdict_lines_follow_the_intervals():
    from fairaudit.reporting.sections import _direction_verdict, _verdict

    fell = {"relative_change": -0.12, "relative_low": -0.15, "relative_high": -0.09, "items": 20}
    assert _verdict("race", fell, "the bias index").startswith("race: the bias index fell by 12.0%")
    unclear = {"relative_change": 0.02, "relative_low": -0.01, "relative_high": 0.05, "items": 20}
    assert "did not change measurably" in _verdict("race", unclear, "the bias index")
    flipped = {"before": 0.3, "after": -0.1, "change_low": -0.5, "change_high": -0.3}
    assert "flipped sign" in _direction_verdict("race", flipped)
    toward = {"before": 0.3, "after": 0.1, "change_low": -0.3, "change_high": -0.1}
    assert "moved toward zero" in _direction_verdict("race", toward) and "includes no change" not in _direction_verdict(
        "race", toward
    )
    away = {"before": -0.2, "after": -0.25, "change_low": -0.1, "change_high": 0.02}
    assert "moved away from zero" in _direction_verdict("race", away) and "includes no change" in _direction_verdict(
        "race", away
    )


def test_small_q_values_are_printed_in_scientific_notation(audited):
    from fairaudit.reporting.sections import p_value_text

    assert (p_value_text(3.2e-7), p_value_text(0.0412), p_value_text(0.0), p_value_text(float("nan"))) == (
        "3.20e-07",
        "0.0412",
        "0",
        "n/a",
    )
    html = audited[1].report.read_text(encoding="utf-8")
    shown = re.findall(r'data-metric="q_value" data-value="[^"]*">([^<]*)<', html)
    assert shown and "0.0000" not in shown


def test_the_configuration_block_shows_the_selection_as_applied(audited):
    import html as html_module

    shown = html_module.unescape(audited[1].report.read_text(encoding="utf-8"))
    block = shown[shown.index("<h3>Configuration</h3>") :]
    assert '"selection": {}' not in block and '"score": "hybrid_scaled"' in block and '"fraction": 0.05' in block


def test_other_models_section_names_the_pruned_model_instead_of_saying_there_is_none(audited):
    root, result = audited
    html = result.report.read_text(encoding="utf-8")
    section = html[html.index('<section id="models">') :]
    section = section[: section.index("</section>")]
    assert "holds no other model" not in section
    assert "The pruned model of this run" in section and Path(result.pruned["out"]).name in section
