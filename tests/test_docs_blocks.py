"""Every fenced code block of the README and the documentation is run or checked here.

- `yaml` blocks are validated as what they are (a suite, a run config, a policy, a sweep);
  `toml` blocks are parsed;
- `bash` and `python` blocks run, page by page in order, in a sandbox folder that holds a
  small random Llama as `./my-model` (and `./wide`, one with wider MLPs; `./planted`, the planted
  model of `fairaudit.testing`), a small run config `audit.yaml`, and a store made by
  probing `./my-model` (`store/`); a block preceded by `<!-- docs-test: file PATH -->` is
  also written to PATH in every sandbox, so that another block can use it;
- a block preceded by `<!-- docs-test: excerpt FILE -->` must be made of lines of FILE;
- `<!-- docs-test: exit 0 1 3 -->`: the exit statuses a block may end with (a release gate's
  verdict on a random model is not a failure of the documentation);
- a block preceded by `<!-- docs-test: skip: REASON -->` is not run, and REASON says which
  test covers it instead (a block that needs the ten-minute default audit, a Ray cluster,
  or two real models);
- `text` blocks are command synopses and output, not code; a documented output's format is
  checked against its sandbox command's (one made of benchmark scripts and `fairaudit`
  commands with plain arguments, joined by `&&`, runs inside the test's process, sparing a fresh
  interpreter's imports of torch and transformers; any other in bash).
"""

from __future__ import annotations

import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from fairaudit.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from regenerate_docs import PAGES as OUTPUT_PAGES  # noqa: E402
from regenerate_docs import documented_outputs

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"(?:<!-- docs-test: (?P<marker>[^\n]*?) -->\n)?^```(?P<language>\w*)\n(?P<body>.*?)^```", re.S | re.M
)
RUN_CONFIG = """model: ./my-model
suites: [race]
store: out/store
probe: {plugin: activations, params: {progress: false}}
pruning: {selection: {fraction: 0.05}}
evaluators: [bias_reprobe, output_bias, {plugin: perplexity, params: {max_length: 64}}]
diagnose_top: 0
"""


def blocks(page: str) -> list[dict[str, str]]:
    text = (ROOT / page).read_text(encoding="utf-8")
    return [
        {"page": page, "marker": m["marker"] or "", "language": m["language"], "body": m["body"]}
        for m in BLOCK.finditer(text)
    ]


ALL = [block for page in PAGES for block in blocks(page)]


def test_every_block_has_a_language_and_every_skip_a_reason():
    for block in ALL:
        assert block["language"], f"{block['page']}: a code block without a language:\n{block['body'][:200]}"
        if block["marker"].startswith("skip"):
            assert len(block["marker"].removeprefix("skip:").strip()) > 20, (
                f"{block['page']}: a skipped block must say why"
            )


@pytest.mark.parametrize("index", [i for i, block in enumerate(ALL) if block["language"] in ("yaml", "toml")])
def test_data_blocks_are_valid(index, tmp_path):
    block = ALL[index]
    if block["language"] == "toml":
        tomllib.loads(block["body"])
        return
    document = yaml.safe_load(block["body"])
    path = tmp_path / "block.yaml"
    path.write_text(block["body"], encoding="utf-8")
    if "suite" in document:
        from fairaudit.inputs.suite import load_suite

        assert load_suite(path).pairs(None)
    elif "rules" in document:  # a policy (a run config may name one under `policy`)
        from fairaudit.compliance.policy import load_policy

        assert load_policy(path).rules
    elif "sweep" in document:
        from fairaudit.pipeline.sweep import load_sweep

        (tmp_path / "audit.yaml").write_text(RUN_CONFIG, encoding="utf-8")
        (tmp_path / "my_axis.yaml").write_text("", encoding="utf-8")
        _, cells = load_sweep(path)
        assert cells
    elif "model" in document:
        from fairaudit.config import RunConfig

        RunConfig.model_validate(document)
    else:
        pytest.fail(f"{block['page']}: a yaml block that is neither a suite, a policy, a sweep nor a run config")


@pytest.mark.parametrize("index", [i for i, block in enumerate(ALL) if block["marker"].startswith("excerpt ")])
def test_excerpts_are_true_to_their_source(index):
    block = ALL[index]
    source = (ROOT / block["marker"].removeprefix("excerpt ").strip()).read_text(encoding="utf-8")
    for line in block["body"].splitlines():
        code = line.split("  #")[0].strip()
        assert not code or code in source, f"{block['page']}: {code!r} is not in {block['marker']}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder with ./my-model, audit.yaml, a probed store/ and every block marked `file`."""
    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit
    from fairaudit.testing import make_model, make_planted_model

    base = tmp_path_factory.mktemp("docs-sandbox")
    make_model("llama", base / "my-model")
    make_model("llama", base / "wide", intermediate=512)
    make_planted_model(base / "planted")
    (base / "audit.yaml").write_text(RUN_CONFIG, encoding="utf-8")
    audit(
        RunConfig.model_validate(
            {
                "model": str(base / "my-model"),
                "suites": ["race", "gender"],
                "store": str(base / "store"),
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": None,
                "evaluators": [],
                "report": False,
                "diagnose_top": 0,
            }
        )
    )
    for block in ALL:
        if block["marker"].startswith("file "):
            target = base / block["marker"].removeprefix("file ").strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block["body"], encoding="utf-8")
    return base


RUNNABLE = sorted(
    {
        block["page"]
        for block in ALL
        if block["language"] in ("bash", "python") and not block["marker"].startswith(("skip", "excerpt"))
    }
)


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE)
def test_command_blocks_run(page, sandbox, tmp_path):
    folder = tmp_path / "sandbox"
    shutil.copytree(sandbox, folder, symlinks=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "CI_COMMIT_SHA": "0123abc",
        "TQDM_DISABLE": "1",
    }
    for block in blocks(page):
        if block["language"] not in ("bash", "python") or block["marker"].startswith(("skip", "excerpt")):
            continue
        command = (
            ["bash", "-e", "-o", "pipefail", "-c", block["body"]]
            if block["language"] == "bash"
            else [sys.executable, "-c", block["body"]]
        )
        accepted = (
            [int(status) for status in block["marker"].removeprefix("exit").split()]
            if block["marker"].startswith("exit")
            else [0]
        )
        completed = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert completed.returncode in accepted, (
            f"{page}: this block failed:\n{block['body']}\n--- stderr ---\n{completed.stderr[-3000:]}"
        )


def table_headers(text: str) -> list[str]:
    """The header line of each table a command prints (the line above a row of dashes), or the
    first line when it prints no dashes; whitespace collapsed."""
    lines = text.strip("\n").splitlines()
    headers = [lines[i - 1] for i in range(1, len(lines)) if re.fullmatch(r"[- ]*-[- ]*", lines[i])]
    return [" ".join(line.split()) for line in headers or lines[:1]]


DOCUMENTED = [(page, match) for page in OUTPUT_PAGES for match in documented_outputs(page)]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(DOCUMENTED)), ids=[f"{page}:{m['command'][:40]}" for page, m in DOCUMENTED])
def test_documented_outputs_have_the_format_the_command_prints(index, sandbox, tmp_path):
    """A documented command output whose format drifts from what the command prints fails here;
    `python scripts/regenerate_docs.py` rewrites the blocks from a fresh run."""
    page, match = DOCUMENTED[index]
    assert match["sandbox"], f"{page}: the docs-output marker of {match['command']!r} names no sandbox command"
    folder = tmp_path / "sandbox"
    shutil.copytree(sandbox, folder, symlinks=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "FAIRAUDIT_ROOT": str(ROOT),  # for a sandbox command that runs one of the project's scripts
    }
    steps = [in_process_step(step) for step in match["sandbox"].split(" && ")]
    if all(steps):  # as bash runs `A > /dev/null && B`: stop at a failing step; what the shown ones print
        printed = ""
        for argv, call, shown in steps:
            completed = in_process(folder, argv, call)
            printed += completed.stdout if shown else ""
            if completed.returncode != 0:
                break
        completed.stdout = printed
    else:
        completed = subprocess.run(
            ["bash", "-c", match["sandbox"]], cwd=folder, env=env, capture_output=True, text=True, timeout=900
        )
    gated = any(name in match["sandbox"] for name in ("fairaudit audit", "fairaudit check"))  # a verdict is output
    assert completed.returncode in ((0, 1, 3) if gated else (0,)), completed.stderr[-3000:]
    assert table_headers(completed.stdout) == table_headers(match["body"]), (
        f"{page}: the output of {match['command']!r} changed format"
    )


def in_process_step(step: str) -> tuple[list[str], Callable[[], object], bool] | None:
    """For a sandbox command's step that is one benchmark script or one `fairaudit` command with
    plain arguments (optionally `> /dev/null`): its argv, a call that runs it as from the command
    line, and whether its output is kept; None for anything else (run by bash)."""
    shown = not step.endswith(" > /dev/null")
    step = step.removesuffix(" > /dev/null")
    script = re.fullmatch(r'python "\$FAIRAUDIT_ROOT/(benchmarks/\w+\.py)"((?: [-\w.,=/]+)*)', step)
    if script:
        path = str(ROOT / script[1])
        return [path, *shlex.split(script[2])], lambda: runpy.run_path(path, run_name="__main__"), shown
    command = re.fullmatch(r"fairaudit((?: [-\w.,=/]+)+)", step)
    if command:
        arguments = shlex.split(command[1])
        return ["fairaudit", *arguments], lambda: main(arguments, prog_name="fairaudit"), shown
    return None


def in_process(folder: Path, argv: list[str], call: Callable[[], object]) -> subprocess.CompletedProcess:
    """Run `call` with `argv` in `folder`, inside this process: what it printed and its exit
    status; the working folder, argv, sys.path and torch's thread count are given back as they were."""
    import torch

    saved = (os.getcwd(), list(sys.argv), list(sys.path), torch.get_num_threads())
    out, err, status = io.StringIO(), io.StringIO(), 0
    try:
        os.chdir(folder)
        sys.argv[:] = argv
        sys.path.insert(0, str(ROOT / "benchmarks"))  # as for a script: its folder's modules import
        with redirect_stdout(out), redirect_stderr(err):
            call()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        err.write(str(exc.code or ""))
    finally:
        os.chdir(saved[0])
        sys.argv[:], sys.path[:] = saved[1], saved[2]
        torch.set_num_threads(saved[3])
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())
