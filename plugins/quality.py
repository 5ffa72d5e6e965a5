"""Built-in quality evaluators: generations, perplexity, lm-evaluation-harness tasks, the
factual control and embedding fidelity (for encoders). `fairaudit_plugins.evaluators`
registers them with the bias evaluators.

Every number is a mean over items (pairs, windows, questions, sentences) whose per-item
values are kept, so that a before/after change can be bootstrapped over the same items.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fairaudit.errors import PluginError
from fairaudit.inputs.model import LoadedModel
from fairaudit.inputs.suite import Suite
from fairaudit.lazy import torch
from fairaudit.measurement.evaluate import (
    EvaluationResult,
    Measurement,
    planned_positions,
    window_nll,
)
from fairaudit.measurement.facts import fact_requests, read_facts, scored_facts
from fairaudit.resources import corpus_path, corpus_sentences, data_dir


class StrictParams(BaseModel):
    """Parameters of a built-in evaluator: an unknown key is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


GENERATION_BATCH = 8  # prompts of one length per generate() call


class GenerationParams(StrictParams):
    pairs_per_axis: int = Field(default=2, ge=1, description="pairs (from distinct templates) generated per axis")
    num_beams: int = Field(
        default=1,
        ge=1,
        description="1: greedy decoding (shows the same before/after differences as 5 beams on the default "
        "prompts, with a fifth of the forwards: benchmarks/generations_decoding.py); 5: the write-up's beam search",
    )
    do_sample: bool = False
    max_length: int = Field(
        default=50, ge=2, description="tokens, prompt included (as the write-up); a longer prompt gets one new token"
    )
    include: list[str] = Field(default_factory=list, description="extra prompts generated on every model")


class Generations:
    name = "generations"
    description = (
        "deterministic continuations of each pair's two prompts (greedy by default; the write-up's num_beams=5, "
        "do_sample=False, max_length=50 with num_beams: 5)"
    )
    requires_causal = True
    exclusive = False  # reads only the model it evaluates
    Params = GenerationParams

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: GenerationParams, reference=None
    ) -> EvaluationResult:
        result = EvaluationResult()
        jobs = [("", "extra", "", "", text) for text in params.include]
        for suite in suites:
            seen: set[str] = set()
            for pair in suite.pairs("probe"):
                if pair.template_id in seen or len(seen) >= params.pairs_per_axis:
                    continue
                seen.add(pair.template_id)
                jobs += [
                    (suite.axis, pair.pair_id, "a", pair.group_a, pair.text_a),
                    (suite.axis, pair.pair_id, "b", pair.group_b, pair.text_b),
                ]
        continuations = self._generate(loaded, [job[-1] for job in jobs], params)
        for (axis, pair_id, side, group, prompt), text in zip(jobs, continuations):
            result.generations.append(
                {"axis": axis, "pair_id": pair_id, "side": side, "group": group, "prompt": prompt, "continuation": text}
            )
        result.measurements.append(Measurement(self.name, "", "generated_prompts", float(len(jobs)), n=len(jobs)))
        return result

    @staticmethod
    def _generate(loaded: LoadedModel, prompts: list[str], params: GenerationParams) -> list[str]:
        """Continuations of `prompts`, in order. Prompts of equal token length share a batch:
        no padding, so each continuation is what generating that prompt alone gives (tested)."""
        tokenizer, continuations = loaded.tokenizer, [""] * len(prompts)
        encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
        by_length: dict[int, list[int]] = {}
        for index, ids in enumerate(encoded):
            by_length.setdefault(len(ids), []).append(index)
        for length, indices in sorted(by_length.items()):
            for start in range(0, len(indices), GENERATION_BATCH):
                chunk = indices[start : start + GENERATION_BATCH]
                ids = torch.tensor([encoded[i] for i in chunk], device=loaded.device)
                with torch.inference_mode():
                    output = loaded.model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        num_beams=params.num_beams,
                        do_sample=params.do_sample,
                        max_length=max(params.max_length, length + 1),
                        pad_token_id=tokenizer.pad_token_id,
                    )
                for index, row in zip(chunk, output):
                    continuations[index] = tokenizer.decode(row[length:], skip_special_tokens=True)
        return continuations


class PerplexityParams(StrictParams):
    file: str | None = Field(default=None, description="a UTF-8 text file; default: the corpus bundled with fairaudit")
    max_length: int = Field(default=512, ge=8, description="tokens per window")
    stride: int | None = Field(
        default=None,
        ge=1,
        description="new tokens scored per window (at most max_length - 1, so that "
        "every scored token has context in its window; default: max_length - 1)",
    )
    batch_size: int = Field(default=4, ge=1)


def _text_ids(loaded: LoadedModel, params: PerplexityParams) -> tuple[Path, list[int]]:
    """The perplexity text's path and token ids."""
    path = Path(params.file) if params.file else corpus_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError(f"perplexity: cannot read text file {path}: {exc}") from None
    return path, loaded.tokenizer(text)["input_ids"]


class Perplexity:
    name = "perplexity"
    description = "perplexity (exp of mean token NLL) on the bundled corpus or a user file, sliding window"
    requires_causal = True
    exclusive = False  # reads only the model it evaluates
    Params = PerplexityParams

    def planned_tokens(self, loaded: LoadedModel, suites: list[Suite], params: PerplexityParams, reference=None) -> int:
        """The token positions of every window (`window_nll`'s), for the audit's time estimate."""
        count, positions = len(_text_ids(loaded, params)[1]), 0
        stride = min(params.stride or params.max_length - 1, params.max_length - 1)
        for begin in range(0, count, stride):
            end = min(begin + params.max_length, count)
            positions += end - begin
            if end == count:
                break
        return positions

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: PerplexityParams, reference=None
    ) -> EvaluationResult:
        path, ids = _text_ids(loaded, params)
        windows = window_nll(loaded, ids, params.max_length, params.stride, params.batch_size)
        result = EvaluationResult()
        total_nll, total_tokens = sum(n for n, _ in windows), sum(t for _, t in windows)
        nll = torch.tensor([n for n, _ in windows], dtype=torch.float64)
        tokens = torch.tensor([t for _, t in windows], dtype=torch.float64)
        generator = torch.Generator().manual_seed(0)
        draws = torch.randint(0, len(windows), (2000, len(windows)), generator=generator)
        resampled = torch.exp(nll[draws].sum(1) / tokens[draws].sum(1))
        label = "bundled" if params.file is None else path.name
        result.measurements.append(
            Measurement(
                self.name,
                "",
                f"perplexity_{label}",
                math.exp(total_nll / total_tokens),
                float(torch.quantile(resampled, 0.025)),
                float(torch.quantile(resampled, 0.975)),
                int(total_tokens),
            )
        )
        result.items[("", f"nll_per_token_{label}")] = {str(i): n / t for i, (n, t) in enumerate(windows)}
        return result


LOCAL_DATASETS = ("json", "csv", "text", "parquet", "arrow")


def tasks_dir() -> Path:
    return data_dir() / "lm_eval_tasks"


def _has_relative_files(yaml_path: Path, config: dict) -> bool:
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    names = [files] if isinstance(files, str) else list(files.values()) if isinstance(files, dict) else []
    return any(not Path(name).is_absolute() and (Path(yaml_path).parent / name).exists() for name in names)


def _with_local_files(yaml_path: Path, config: dict) -> dict:
    """A local task's config with its relative `data_files` resolved against its YAML's folder."""
    config = {key: value for key, value in config.items() if key not in ("include",)}
    kwargs = dict(config.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    folder = Path(yaml_path).parent
    resolve = lambda name: str(folder / name) if not Path(name).is_absolute() and (folder / name).exists() else name  # noqa: E731
    if isinstance(files, str):
        kwargs["data_files"] = resolve(files)
    elif isinstance(files, dict):
        kwargs["data_files"] = {split: resolve(name) for split, name in files.items()}
    config["dataset_kwargs"] = kwargs
    return config


class LmEvalParams(StrictParams):
    tasks: list[str] = Field(default_factory=lambda: ["fairaudit_commonsense"], min_length=1)
    include_path: str | None = Field(
        default=None, description="folder of local task YAML; default: fairaudit's bundled tasks"
    )
    limit: int | None = Field(default=None, ge=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=8, ge=1)
    allow_task_code: bool = Field(
        default=False,
        description="run Python that include_path's task YAML names with !function (granted by --allow-task-code only)",
    )

    @model_validator(mode="after")
    def _no_foreign_code(self) -> LmEvalParams:
        if self.include_path and not self.allow_task_code:
            found = task_code_in(Path(self.include_path))
            if found:
                raise ValueError(
                    f"the lm-eval task folder {self.include_path} runs Python code: {found}. lm-eval would import "
                    f"and run it; pass --allow-task-code only if you trust that folder"
                )
        return self


def task_code_in(folder: Path, limit: int = 2000) -> str:
    """Where a folder of lm-eval task YAML (and the files they `include:`) names Python with a
    `!function` tag, or '' when none does."""
    pending = sorted(folder.rglob("*.y*ml"))[:limit] if folder.is_dir() else [folder]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen or not path.is_file() or len(seen) >= limit:
            continue
        seen.add(path)
        try:
            text = path.read_bytes()[: 5 << 20].decode("utf-8", errors="replace")
        except OSError:
            continue
        if re.search(r"!function\b", text):
            return f"{path} uses !function"
        for included in re.findall(r"^\s*include:\s*['\"]?([^'\"\s#]+)", text, flags=re.MULTILINE):
            pending.append((path.parent / included).resolve())
    return ""


def _quiet_hflm(HFLM: type) -> type:
    """lm-eval's HFLM with its own bars off: they would nest inside fairaudit's one line per stage."""

    class QuietHFLM(HFLM):  # type: ignore[valid-type,misc]
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval's own console output off while it runs (the evaluator is exclusive: nothing else
    runs meanwhile): the bar of its request building, and the environment report it adds to its
    results (`git describe` in the working directory, which prints "fatal: not a git repository"
    outside one, and torch's environment survey, which runs several programs), neither of which
    fairaudit reads. Attributes lm-eval lacks in another version are left alone."""
    import functools

    import lm_eval.api.task
    import lm_eval.evaluator
    import lm_eval.loggers.utils
    from tqdm import tqdm

    patches = [
        (lm_eval.api.task, "tqdm", functools.partial(tqdm, disable=True)),
        (lm_eval.evaluator, "get_git_commit_hash", lambda: None),
        (lm_eval.loggers.utils, "get_git_commit_hash", lambda: None),
        (lm_eval.evaluator, "add_env_info", lambda storage: None),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches if hasattr(module, name)]
    for module, name, value in patches:
        if hasattr(module, name):
            setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


class LmEval:
    name = "lm_eval"
    description = (
        "lm-evaluation-harness tasks on the in-memory model (hub tasks online; local task YAML + JSONL offline)"
    )
    requires_causal = True
    exclusive = True  # lm-eval seeds the process' random generators
    Params = LmEvalParams

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: LmEvalParams, reference=None
    ) -> EvaluationResult:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        include = params.include_path or str(tasks_dir())
        manager = TaskManager(
            include_path=include, include_defaults=False
        )  # indexing lm-eval's own ~15,000 tasks takes 7 s
        if any(task not in manager.all_tasks for task in params.tasks):
            manager = TaskManager(include_path=include)
        unknown = [task for task in params.tasks if task not in manager.all_tasks]
        if unknown:
            raise PluginError(f"lm_eval: unknown task(s) {unknown}; local tasks are read from {include}.")
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        specs: list = []
        for task in params.tasks:
            entry = manager.task_index[task]
            config = dict(entry.cfg or {})
            dataset = config.get("dataset_path")
            if offline and dataset and dataset not in LOCAL_DATASETS:
                raise PluginError(
                    f"lm_eval: task '{task}' needs the data set '{dataset}' from the Hugging Face hub, which is offline. "
                    f"To run it offline, write a task YAML with 'dataset_path: json' and 'dataset_kwargs: {{data_files: ...}}' "
                    f"pointing to local JSONL files, put it in a folder and pass that folder as include_path "
                    f"(see {tasks_dir()} for an example)."
                )
            specs.append(
                _with_local_files(entry.yaml_path, config)
                if dataset in LOCAL_DATASETS and entry.yaml_path and _has_relative_files(entry.yaml_path, config)
                else task
            )

        model = _quiet_hflm(HFLM)(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=params.batch_size)
        import datasets

        # `datasets` pings the hub's S3 bucket to count every load, a local JSON file's too, unless
        # offline: fairaudit sends nothing it was not asked to (docs/trust.md, "Network")
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
        try:
            with _quiet_lm_eval():
                output = lm_eval.simple_evaluate(
                    model=model,
                    tasks=specs,
                    task_manager=manager,
                    limit=params.limit,
                    num_fewshot=params.num_fewshot,
                    log_samples=True,
                    verbosity="ERROR",
                )
        except Exception as exc:
            raise PluginError(
                f"lm_eval: tasks {params.tasks} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        result = EvaluationResult()
        for task, values in output["results"].items():
            samples = output.get("samples", {}).get(task, [])
            for key, value in values.items():
                if not isinstance(value, (int, float)) or "," not in key or "stderr" in key:
                    continue
                metric = key.split(",")[0]
                per_doc = {
                    str(s["doc_id"]): float(s[metric]) for s in samples if isinstance(s.get(metric), (int, float, bool))
                }
                if per_doc:
                    result.add_items(self.name, task, metric, per_doc)
                else:
                    result.measurements.append(Measurement(self.name, task, metric, float(value), n=len(samples)))
        return result


class FactsParams(StrictParams):
    file: str | None = Field(
        default=None, description="JSONL of {id, category, prompt, correct, distractors}; default: bundled"
    )
    batch_size: int = Field(default=16, ge=1)


def _facts(params: FactsParams) -> list[dict]:
    try:
        return read_facts(params.file)
    except ValueError as exc:
        raise PluginError(f"facts: {exc}") from None


class FactualControl:
    name = "facts"
    description = (
        "factual-knowledge control: facts whose answer depends on a demographic word for factual reasons "
        "(kinship, pronouns, capitals, languages, religious holidays); accuracy and log-probability"
    )
    requires_causal = True
    exclusive = False  # reads only the model it evaluates
    Params = FactsParams

    def planned_tokens(self, loaded: LoadedModel, suites: list[Suite], params: FactsParams, reference=None) -> int:
        """About how many token positions `evaluate` forwards, for the audit's time estimate."""
        return planned_positions(loaded.tokenizer, fact_requests(_facts(params)))

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: FactsParams, reference=None
    ) -> EvaluationResult:
        facts = _facts(params)
        scored = scored_facts(loaded, facts, params.batch_size)
        accuracy = {fact["id"]: float(margin > 0) for fact, (_, margin) in zip(facts, scored)}
        logprob = {fact["id"]: correct for fact, (correct, _) in zip(facts, scored)}
        result = EvaluationResult()
        result.add_items(self.name, "", "fact_accuracy", accuracy)
        result.add_items(self.name, "", "fact_logprob", logprob)
        for category in sorted({fact["category"] for fact in facts}):
            result.add_items(
                self.name,
                category,
                "fact_accuracy",
                {fact["id"]: accuracy[fact["id"]] for fact in facts if fact["category"] == category},
            )
        return result


class FidelityParams(StrictParams):
    sentences: int = Field(default=200, ge=2, description="sentences of the bundled corpus compared")
    batch_size: int = Field(default=16, ge=1)


def _pooled_embeddings(loaded: LoadedModel, sentences: list[str], batch_size: int) -> torch.Tensor:
    base = loaded.model.base_model if loaded.has_lm_head else loaded.model
    rows = []
    for start in range(0, len(sentences), batch_size):
        batch = loaded.tokenizer(sentences[start : start + batch_size], return_tensors="pt", padding=True).to(
            loaded.device
        )
        with torch.inference_mode():
            hidden = base(**batch).last_hidden_state.double()
        mask = batch["attention_mask"].unsqueeze(-1).double()
        rows.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    return torch.cat(rows)


class Fidelity:
    name = "fidelity"
    description = "cosine similarity of mean-pooled last hidden states, pruned vs unpruned, on corpus sentences"
    requires_causal = False
    exclusive = True  # reads the unpruned reference too
    Params = FidelityParams

    def planned_tokens(self, loaded: LoadedModel, suites: list[Suite], params: FidelityParams, reference=None) -> int:
        """The sentences' token positions through both models, for the audit's time estimate."""
        if reference is None:
            return 0
        return 2 * sum(len(ids) for ids in loaded.tokenizer(corpus_sentences(params.sentences))["input_ids"])

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: FidelityParams, reference: LoadedModel | None = None
    ) -> EvaluationResult:
        result = EvaluationResult()
        if reference is None:
            return result  # fidelity compares a pruned model with its reference; nothing to measure alone
        sentences = corpus_sentences(params.sentences)
        cosine = torch.nn.functional.cosine_similarity(
            _pooled_embeddings(loaded, sentences, params.batch_size),
            _pooled_embeddings(reference, sentences, params.batch_size),
            dim=1,
        )
        result.add_items(self.name, "", "embedding_cosine", {str(i): float(c) for i, c in enumerate(cosine)})
        return result
