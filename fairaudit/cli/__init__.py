"""The `fairaudit` command (also `python -m fairaudit`): one module per command group
(`suites`, `runs`, `prune`, `analysis`, `compliance`), with the shared options (`options`)
and printing (`output`). A command parses its flags into the typed settings of
`fairaudit.config`, calls one function of the Python API and prints what it returns; the
work lives in the package that owns it.

User errors (`FairauditError`, click's usage errors) print one `error:` paragraph and exit 2;
Ctrl-C exits 130 and a termination signal (SIGTERM) 143, each run in progress recorded as
interrupted; any other exception is a bug: its traceback, and exit status 70. A policy's gate
exits 1 (fail) or 3 (undecided), an audit whose evaluator failed 4. Progress goes through the
`fairaudit` logger, one `fairaudit: ...` line per stage on stderr; `--quiet` silences it, `-v` adds detail and lets libraries' notices through.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from fairaudit.cli import analysis, compliance, prune, runs, suites
from fairaudit.errors import FairauditError
from fairaudit.escaping import for_terminal


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM), raised in the main thread so that the run in progress is
    recorded as interrupted, like Ctrl-C."""


class _ProgressLines(logging.Handler):
    """fairaudit's log records as `fairaudit: TEXT` lines on stderr, written through tqdm so that a
    progress bar on the same terminal is not torn (stderr looked up at each line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(f"fairaudit: {record.getMessage()}", file=sys.stderr)
        except Exception:  # a broken stderr must not break the run
            self.handleError(record)


def configure_logging(verbose: int = 0) -> None:
    """The `fairaudit` logger prints its records at INFO (DEBUG with -v); libraries' own notices
    (lm-eval's, transformers') stay off the console unless -v."""
    logger = logging.getLogger("fairaudit")
    if not any(isinstance(handler, _ProgressLines) for handler in logger.handlers):
        logger.addHandler(_ProgressLines())
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for library in ("lm_eval", "datasets", "accelerate"):
        logging.getLogger(library).setLevel(logging.INFO if verbose else logging.ERROR)


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM raises `Terminated` (main thread only; restored after), and
    an interrupt that lands inside a finalizer is delivered again (`_redeliver`)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, on_signal)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: _redeliver(unraisable, hook)
    try:
        yield
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGTERM, previous)


def _redeliver(unraisable: Any, hook: Any) -> None:
    """Python cannot raise from a finalizer (`__del__`, a weakref callback): a Ctrl-C or SIGTERM
    that arrives while one runs would be printed as "Exception ignored ... Traceback" and lost,
    and the run would go on. Send the signal again, a moment later from another thread, so that its
    handler runs after the finalizer, in the main thread's code, where it interrupts the run (one
    that lands in a finalizer again comes back here). Anything else goes to `hook`."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        number = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
        timer = threading.Timer(0.05, os.kill, (os.getpid(), number))  # after this hook has returned
        timer.daemon = True
        timer.start()
        return
    hook(unraisable)  # anything else: as the hook installed before would


class _Group(click.Group):
    """Turns user errors into one clear line and exit status 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's own usage errors (an unknown option, a missing argument) read like every other
        user error: `error:` and one paragraph, exit status 2."""
        kwargs["standalone_mode"] = False
        # transformers' own bars and load reports ("Loading weights", "Writing model shards") and
        # datasets' ("Generating test split") would interleave with fairaudit's one line per stage;
        # a user who wants them sets these variables
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # nothing leaves the machine unasked (docs/trust.md)
        os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "false")
        configure_logging()
        try:
            with _terminated_as_interrupt():
                return super().main(*args, **kwargs)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "fairaudit"
            click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FairauditError as exc:
            click.echo(f"error: {for_terminal(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            run_id = getattr(exc, "run_id", None)
            how = (
                f"finish it with: fairaudit audit --resume {run_id} --store {getattr(exc, 'store', '')}"
                if run_id
                else "rerun the command to finish (a sweep skips its complete cells)"
            )
            click.echo(
                f"{'terminated' if isinstance(exc, Terminated) else 'interrupted'}: results written so far are "
                f"intact; {how}",
                err=True,
            )
            sys.exit(143 if isinstance(exc, Terminated) else 130)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise  # click's own: handled in `main`
        except Exception:  # a bug, not a verdict: its own status, so that no gate reads it as "fail" (1)
            import traceback

            traceback.print_exc()
            click.echo(
                "error: fairaudit stopped on an unexpected error, a bug: please report it with the traceback above",
                err=True,
            )
            sys.exit(BUG)


BUG = 70  # EX_SOFTWARE of sysexits.h


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fairaudit")
@click.option("-v", "--verbose", count=True, help="more detail on stderr, and libraries' own notices")
def main(verbose: int) -> None:
    """Audit transformer language models for social bias, axis by axis."""
    configure_logging(verbose)


for command in (
    suites.suites,
    suites.plugins,
    runs.probe,
    runs.audit_command,
    runs.evaluate_command,
    analysis.diagnose_command,
    analysis.overlap,
    prune.prune_command,
    compliance.report_command,
    runs.sweep_command,
    compliance.check_command,
    compliance.card_command,
    compliance.bundle_command,
    compliance.verify_command,
    runs.store_group,
):
    main.add_command(command)


def entry() -> None:
    """The `fairaudit` command and `python -m fairaudit`: `main`, then an exit that does not tear
    the interpreter down under an evaluator thread still running (one abandoned by a time limit,
    or interrupted by Ctrl-C): that aborts the process ("terminate called without an active
    exception", exit 134) instead of exiting with the command's status. Exit handlers still run."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    evaluation = sys.modules.get("fairaudit.pipeline.evaluation")  # no evaluator thread unless it was imported
    running = evaluation is not None and any(
        thread.name == evaluation.EVALUATOR_THREAD and thread.is_alive() for thread in threading.enumerate()
    )
    if running:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
