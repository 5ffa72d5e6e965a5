"""Options and helpers the commands share: --device/--dtype, the trust flags, --quiet, plugin
lists in --help, and opening a store's runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import BaseModel

from fairaudit.config import ModelSpec

if TYPE_CHECKING:
    from fairaudit.compliance.policy import Policy
    from fairaudit.store import Store

F = TypeVar("F", bound=Callable[..., Any])


class ListsPlugins(click.Command):
    """A command whose --help ends with the registered plugins of `kinds` (and, for scorers, the
    score columns each writes with its default parameters), computed only when help is shown."""

    kinds: tuple[str, ...] = ()

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from fairaudit.plugins import registry

        plugins = registry()
        for kind in self.kinds:
            rows = []
            for name in plugins.names(kind):
                component = plugins.get(kind, name)
                columns = getattr(component, "outputs", None)
                written = (
                    f" [columns: {', '.join(columns(component.Params()))}]"
                    if kind == "scorer" and columns and columns(component.Params())
                    else ""
                )
                rows.append((name, f"{component.description}{written}"))
            with formatter.section(f"{kind.capitalize()}s (fairaudit plugins lists every kind)"):
                formatter.write_dl(rows)
        super().format_epilog(ctx, formatter)


def lists(*kinds: str) -> type[click.Command]:
    """A command class whose --help lists the plugins of `kinds`."""
    return type("ListsPlugins", (ListsPlugins,), {"kinds": kinds})


def quiet_mode() -> None:
    """--quiet: fairaudit's progress lines off (the `fairaudit` logger at WARNING), and no progress
    bars or notices from transformers either."""
    import transformers

    logging.getLogger("fairaudit").setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def device_options(command: F) -> F:
    """--device and --dtype: where the model runs and in which precision (default: the run
    config's, else cpu and float32). Activations are reduced in float32 whatever the dtype."""
    command = click.option(
        "--dtype",
        type=click.Choice(["float32", "float16", "bfloat16"]),
        default=None,
        help="dtype of the weights (default float32); bfloat16 halves memory (the causal "
        "planner still measures in float32: docs/attribution.md)",
    )(command)
    return click.option("--device", default=None, help="torch device: cpu (default), cuda, cuda:1, mps")(command)


def device_fields(device: str | None, dtype: str | None) -> dict[str, str]:
    """The `model:` fields --device and --dtype set (those given)."""
    return {key: value for key, value in (("device", device), ("dtype", dtype)) if value is not None}


def on_device(model_id: str, device: str | None, dtype: str | None) -> str | ModelSpec:
    """A model id, or a ModelSpec when --device or --dtype was given."""
    if not device_fields(device, dtype):
        return model_id
    return ModelSpec.model_validate({"id": model_id, **device_fields(device, dtype)})


def trust_options(command: F) -> F:
    """--trust-remote-code, --allow-pickle, --allow-task-code: what a file may ask for but only the user grants."""
    for flag, text in reversed(
        [
            (
                "--trust-remote-code",
                "let a config (or stored run) load a model that ships its own code (only models you trust)",
            ),
            ("--allow-pickle", "let a config (or stored run) read pickled (.bin) weights (only models you trust)"),
            (
                "--allow-task-code",
                "let an lm-eval task folder (include_path) run the Python its YAML names with !function",
            ),
        ]
    ):
        command = click.option(
            flag, "granted", flag_value=flag.removeprefix("--").replace("-", "_"), multiple=True, help=text
        )(command)
    return command


def open_store(store: Path) -> Store:
    """The store at `store`, which must exist (a reader never creates one)."""
    from fairaudit.errors import StoreError
    from fairaudit.store import Store

    if not Path(store).is_dir():
        raise StoreError(f"{store} is not a store folder (it does not exist).")
    return Store(store)


def latest_audit(opened: Store, run_id: str | None, complete: bool = True) -> str:
    """`run_id`, or the store's latest complete audit run. With `complete`, a named run must be a
    complete audit: a running, failed or interrupted run (or a prune, evaluate, match or sweep
    run) is never checked, carded or bundled as if it had finished."""
    from fairaudit.errors import StoreError

    if run_id is not None:
        record = opened.read_run(run_id)
        kind, status = record.get("kind", "audit"), record.get("status")
        if complete and (kind != "audit" or status != "complete"):
            raise StoreError(
                f"run {run_id} is {'an' if kind == 'audit' else 'a'} {kind} run whose status is '{status}'; only a "
                f"complete audit run can be checked, carded or bundled. Finish it (fairaudit audit --resume "
                f"{run_id}) or name a complete audit run (fairaudit store ls {opened.root})."
            )
        return run_id
    audits = [r for r in opened.runs() if r.get("kind", "audit") == "audit" and r.get("status") == "complete"]
    if not audits:
        raise StoreError(f"store {opened.root} has no complete audit run.")
    return str(audits[-1]["run_id"])


def policy_for(opened: Store, run_id: str, policy_name: str | None) -> Policy:
    """The policy named on the command line, else the one the run was audited against."""
    from fairaudit.compliance.policy import load_policy, stored_policy
    from fairaudit.errors import ConfigError

    if policy_name is not None:
        return load_policy(policy_name)
    policy = stored_policy(opened.read_run(run_id))
    if policy is None:
        raise ConfigError(
            f"run {run_id} was not audited against a policy; name one with --policy (e.g. --policy default)."
        )
    return policy


def field_option(
    *names: str, model: type[BaseModel], field: str, help: str | None = None, **kwargs: Any
) -> Callable[[F], F]:
    """A click option for one field of a settings model (`fairaudit.config`). Its default is the
    field's, shown in --help but not passed: the option is None unless given, and the command
    builds the model from the options given, so a default is written once, on the field."""
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    if isinstance(default, list):
        default = ",".join(str(item) for item in default)
    shown = str(default).lower() if isinstance(default, bool) else default
    return click.option(
        *names,
        default=None,
        show_default=str(shown) if shown is not None else False,
        help=help or info.description,
        **kwargs,
    )


def given(**values: Any) -> dict[str, Any]:
    """The options the user gave (not None), as fields of a settings model."""
    return {name: value for name, value in values.items() if value is not None}
