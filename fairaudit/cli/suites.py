"""`fairaudit suites ...` (list, show, validate, import) and `fairaudit plugins`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fairaudit.cli.output import dumps, print_table
from fairaudit.errors import FairauditError


@click.group()
def suites() -> None:
    """List, show and validate suites."""


@suites.command("list")
def suites_list() -> None:
    """List the built-in suites."""
    from fairaudit.inputs.suite import builtin_suite_names, resolve_suite

    rows = []
    for name in builtin_suite_names():
        suite = resolve_suite(name)
        rows.append(
            [
                name,
                suite.axis,
                str(len(suite.groups)),
                str(len(suite.templates)),
                str(len(suite.pairs(None))),
                str(len(suite.statements)),
                str(len(suite.statement_pairs())),
                str(len(suite.scenarios)),
                str(len(suite.all_questions())),
                str(len(suite.controls)),
            ]
        )
    print_table(
        rows,
        [
            "suite",
            "axis",
            "groups",
            "templates",
            "pairs",
            "statements",
            "statement pairs",
            "scenarios",
            "questions",
            "controls",
        ],
    )


@suites.command("show")
@click.argument("name")
@click.option("--split", type=click.Choice(["probe", "heldout", "all"]), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the pairs as JSON lines")
def suites_show(name: str, split: str, as_json: bool) -> None:
    """Show the pairs a suite (built-in NAME or a file) expands to, and its questions (every split:
    no selection reads them)."""
    from fairaudit.inputs.suite import resolve_suite

    suite = resolve_suite(name)
    chosen = None if split == "all" else split
    pairs = suite.pairs(chosen) + suite.statement_pairs(chosen) + suite.control_pairs()
    for pair in pairs:
        if as_json:
            click.echo(pair.model_dump_json())
        elif pair.kind == "statement":  # the negative sentences; the neutral one differs before the group
            neutral = pair.contexts["neutral"] + pair.text_a[len(pair.contexts["negative"]) :]
            click.echo(f"[{pair.pair_id}]\n  a: {pair.text_a}\n  b: {pair.text_b}\n  neutral a: {neutral}")
        else:
            click.echo(f"[{pair.pair_id}]\n  a: {pair.text_a}\n  b: {pair.text_b}")
    for question in suite.all_questions():
        if as_json:
            click.echo(question.model_dump_json())
            continue
        answers = " | ".join(
            f"{text}{' (biased)' if index in question.biased else ''}{' (correct)' if index == question.label else ''}"
            for index, text in enumerate(question.answers)
        )
        click.echo(f"[{question.id}]\n  {question.context}\n  Q: {question.question}\n  answers: {answers}")


@suites.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def suites_validate(files: tuple[Path, ...]) -> None:
    """Validate suite files; exit status 2 if any is invalid."""
    from fairaudit.inputs.suite import load_suite

    failed = 0
    for path in files:
        try:
            suite = load_suite(path)
        except FairauditError as exc:
            failed += 1
            click.echo(f"error: {exc}", err=True)
        else:
            click.echo(
                f"ok: {path} (axis {suite.axis}, {len(suite.pairs(None))} pairs, "
                f"{len(suite.statement_pairs())} statement pairs, {len(suite.all_questions())} questions, "
                f"{len(suite.controls)} controls)"
            )
    if failed:
        sys.exit(2)


@suites.command("import")
@click.argument("kind")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="folder for the suites (one YAML per bias type)"
)
@click.option("--json", "as_json", is_flag=True)
def suites_import(kind: str, file: Path, out: Path, as_json: bool) -> None:
    """Import a public data set FILE as suites; KIND is an importer plugin (crows-pairs, stereoset)."""
    from fairaudit.errors import SuiteError
    from fairaudit.inputs.importing import write_suites
    from fairaudit.plugins import registry

    importer = registry().get("importer", kind)
    if not file.is_file():
        raise SuiteError(f"data set file {file} does not exist.")
    result = importer.import_file(file, importer.Params())
    if not result.suites:
        raise SuiteError(f"{file}: no row could be imported ({len(result.skipped)} of {result.rows} rows skipped).")
    written = write_suites(result.suites, out)
    if as_json:
        click.echo(
            dumps(
                {
                    "rows": result.rows,
                    "imported": result.imported,
                    "written": [str(p) for p in written],
                    "skipped": [s.__dict__ for s in result.skipped],
                }
            )
        )
        return
    for path, suite in zip(written, result.suites):
        items = f"{len(suite.questions)} questions" if suite.questions else f"{len(suite.sentence_pairs)} pairs"
        click.echo(f"{path}: axis {suite.axis}, {items}")
    for row in result.skipped:
        click.echo(f"skipped row {row.row} (id {row.row_id}): {row.reason}", err=True)
    click.echo(
        f"{result.rows} rows: {result.imported} imported into {len(written)} suites, {len(result.skipped)} skipped"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True)
def plugins(as_json: bool) -> None:
    """List installed plugins: kind, name, where each comes from."""
    from fairaudit.plugins import registry

    entries = registry().entries()
    if as_json:
        click.echo(
            dumps(
                [
                    {
                        "kind": e.kind,
                        "name": e.name,
                        "plugin": e.plugin,
                        "distribution": e.distribution,
                        "version": e.version,
                        "description": e.description,
                    }
                    for e in entries
                ]
            )
        )
        return
    print_table(
        [[e.kind, e.name, f"{e.distribution} {e.version}".strip(), e.description] for e in entries],
        ["kind", "name", "from", "description"],
    )
