"""Built-in evaluators: bias re-probe, output-level bias, generations, perplexity,
lm-evaluation-harness tasks, and embedding fidelity (for encoders).

Every number is a mean over items (pairs, windows, questions, sentences) whose per-item
values are kept, so that a before/after change can be bootstrapped over the same items.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fairaudit.errors import PluginError
from fairaudit.hookspecs import hookimpl
from fairaudit.inputs.model import LoadedModel, weights_hash
from fairaudit.inputs.suite import Suite
from fairaudit.lazy import torch
from fairaudit.measurement import metrics
from fairaudit.measurement.evaluate import (
    LOGLIKELIHOODS,
    EvaluationResult,
    Measurement,
    divergence_rows,
    encode_request,
    has_hooks,
    loglikelihoods,
    probe_key,
    recall,
    remember,
    window_nll,
)
from fairaudit.resources import corpus_path, corpus_sentences, data_dir


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- bias re-probe --------------------------------------------------------------------------


class ReprobeParams(_Params):
    position: Literal["mean", "last", "aligned"] = "mean"
    batch_size: int = Field(default=16, ge=2)


class BiasReprobe:
    name = "bias_reprobe"
    description = "bias index per axis on the probe templates and on held-out templates (per-pair values kept)"
    requires_causal = False
    exclusive = False  # reads only the model it evaluates
    Params = ReprobeParams

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: ReprobeParams, reference=None
    ) -> EvaluationResult:
        from fairaudit.plugins import registry

        probe = registry().get("probe", "activations")
        probe_params = probe.Params(
            position=params.position,
            batch_size=params.batch_size,
            components=["attention", "mlp"],
            optipfair_index=False,
            progress=False,
        )
        result = EvaluationResult()
        for suite in suites:
            for split, metric in (("probe", "bias_index"), ("heldout", "bias_index_heldout")):
                pairs = suite.pairs(split)
                if not pairs:
                    continue
                # the probe stage measured the probe split on this very model: reuse its per-pair
                # values while the weights hash is unchanged and no mask is on (`recall`)
                known = (recall(loaded, probe_key(suite.axis, params.position)) or {}) if split == "probe" else {}
                missing = [pair for pair in pairs if pair.pair_id not in known]
                rows = dict(known)
                if missing:
                    stats = probe.run(loaded, missing, [], probe_params, suite.axis)
                    rows.update(divergence_rows(stats))
                divergence = {
                    name: torch.stack([rows[pair.pair_id][name] for pair in pairs]) for name in metrics.INDEX_COMPONENTS
                }
                per_pair = metrics.index_of_divergence(divergence)
                result.add_items(
                    self.name,
                    suite.axis,
                    metric,
                    {pair.pair_id: value for pair, value in zip(pairs, per_pair.tolist())},
                )
                if (
                    split == "probe"
                ):  # per-layer profiles with 95% intervals over pairs, for the before/after layer charts
                    for component in metrics.INDEX_COMPONENTS:
                        per_layer = divergence[component].double()  # [pairs, layers]
                        profile = per_layer.mean(dim=0)  # metrics.layer_divergence
                        bounds = [
                            metrics.bootstrap_interval(per_layer[:, layer]) for layer in range(per_layer.shape[1])
                        ]
                        name = f"{component}_divergence_by_layer"
                        result.items[(suite.axis, name)] = {str(i): float(v) for i, v in enumerate(profile)}
                        result.items[(suite.axis, f"{name}_low")] = {str(i): low for i, (low, _) in enumerate(bounds)}
                        result.items[(suite.axis, f"{name}_high")] = {
                            str(i): high for i, (_, high) in enumerate(bounds)
                        }
        return result


# --- output-level bias ----------------------------------------------------------------------


class OutputBiasParams(_Params):
    batch_size: int = Field(default=16, ge=1)


class OutputBias:
    name = "output_bias"
    description = (
        "log-probability gaps of declared continuations between the two sides of each pair; "
        "for sentence pairs, the share where the stereotyping sentence is more likely"
    )
    requires_causal = True
    exclusive = False  # reads only the model it evaluates
    Params = OutputBiasParams

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: OutputBiasParams, reference=None
    ) -> EvaluationResult:
        result = EvaluationResult()
        # what this computes is left on the model for the random baseline's unmasked runs (`recall`)
        weights = None if has_hooks(loaded.model) else weights_hash(loaded.model)
        computed: dict[tuple[str, str], float] = {}

        def score(requests: list[tuple[str, str]]) -> list[float]:
            values = loglikelihoods(loaded, requests, params.batch_size)
            computed.update(zip(requests, values))
            return values

        for suite in suites:
            pairs = [pair for pair in suite.pairs(None) if pair.kind == "template" and pair.continuations]
            labels = sorted({label for pair in pairs for label in pair.continuations})
            requests = [
                (text, pair.continuations[label])
                for pair in pairs
                for label in labels
                if label in pair.continuations
                for text in (pair.text_a, pair.text_b)
            ]
            scores = iter(score(requests))
            by_label: dict[str, dict[str, float]] = {label: {} for label in labels}
            for pair in pairs:
                for label in labels:
                    if label in pair.continuations:
                        side_a, side_b = next(scores), next(scores)
                        by_label[label][pair.pair_id] = side_a - side_b
            for label, gaps in by_label.items():
                if gaps:
                    result.add_items(self.name, suite.axis, f"logprob_gap_{label}", gaps)
            if "negative" in by_label and "neutral" in by_label:
                shared = [key for key in by_label["negative"] if key in by_label["neutral"]]
                if shared:
                    result.add_items(
                        self.name,
                        suite.axis,
                        "stereotype_preference",
                        {key: by_label["negative"][key] - by_label["neutral"][key] for key in shared},
                    )
            sentences = [pair for pair in suite.pairs("probe") if pair.kind == "sentence"]
            crows = [pair for pair in sentences if not pair.unrelated]
            if crows:
                _crows_pairs_scores(self.name, score, suite.axis, crows, result)
            stereoset = [pair for pair in sentences if pair.unrelated]
            if stereoset:
                _stereoset_scores(self.name, score, loaded, suite.axis, stereoset, result)
        if weights is not None:
            remember(loaded, LOGLIKELIHOODS, computed, weights)
        return result


Scoring = Callable[[list[tuple[str, str]]], list[float]]  # (context, continuation) requests -> log-likelihoods


def _crows_pairs_scores(name: str, score: Scoring, axis: str, pairs: list, result: EvaluationResult) -> None:
    """lm-eval's crows_pairs metrics: summed log-likelihood of each sentence with an empty
    context; pct_stereotype = share preferring the first (more stereotyping) sentence,
    likelihood_diff = mean |difference|; and the original paper's split by direction."""
    likelihoods = score([("", text) for pair in pairs for text in (pair.text_a, pair.text_b)])
    more, less = likelihoods[0::2], likelihoods[1::2]
    result.add_items(name, axis, "pct_stereotype", {p.pair_id: float(a > b) for p, a, b in zip(pairs, more, less)})
    result.add_items(name, axis, "likelihood_diff", {p.pair_id: abs(a - b) for p, a, b in zip(pairs, more, less)})
    for direction in ("stereo", "antistereo"):
        chosen = {p.pair_id: float(a > b) for p, a, b in zip(pairs, more, less) if p.label == direction}
        if chosen:
            result.add_items(name, axis, f"pct_stereotype_{direction}", chosen)


def _stereoset_scores(
    name: str, score: Scoring, loaded: LoadedModel, axis: str, pairs: list, result: EvaluationResult
) -> None:
    """StereoSet (Nadeem et al., 2021) intrasentence scores from each sentence's mean token
    log-probability (empty context): SS = share of items where the stereotype beats the
    anti-stereotype; LMS = share of (meaningful, unrelated) comparisons the meaningful sentence
    wins; ICAT = LMS * min(SS, 1 - SS) / 0.5. Shares in [0, 1] (the paper prints x100)."""
    texts = [text for pair in pairs for text in (pair.text_a, pair.text_b, pair.unrelated)]
    totals = score([("", text) for text in texts])
    lengths = [len(encode_request(loaded.tokenizer, "", text)[1]) for text in texts]
    mean = [total / max(length, 1) for total, length in zip(totals, lengths)]
    stereotype, anti, unrelated = mean[0::3], mean[1::3], mean[2::3]
    result.add_items(name, axis, "stereoset_ss", {p.pair_id: float(s > a) for p, s, a in zip(pairs, stereotype, anti)})
    lms = {f"{p.pair_id}:stereotype": float(s > u) for p, s, u in zip(pairs, stereotype, unrelated)}
    lms.update({f"{p.pair_id}:anti-stereotype": float(a > u) for p, a, u in zip(pairs, anti, unrelated)})
    result.add_items(name, axis, "stereoset_lms", lms)
    ss, lm_score = sum(float(s > a) for s, a in zip(stereotype, anti)) / len(pairs), sum(lms.values()) / len(lms)
    result.measurements.append(
        Measurement(name, axis, "stereoset_icat", lm_score * min(ss, 1 - ss) / 0.5, n=len(pairs))
    )


# --- generations ----------------------------------------------------------------------------

GENERATION_BATCH = 8  # prompts of one length per generate() call


class GenerationParams(_Params):
    pairs_per_axis: int = Field(default=2, ge=1, description="pairs (from distinct templates) generated per axis")
    num_beams: int = Field(default=5, ge=1)
    do_sample: bool = False
    max_length: int = Field(
        default=50, ge=2, description="tokens, prompt included (as the write-up); a longer prompt gets one new token"
    )
    include: list[str] = Field(default_factory=list, description="extra prompts generated on every model")


class Generations:
    name = "generations"
    description = (
        "deterministic continuations of each pair's two prompts (write-up: num_beams=5, do_sample=False, max_length=50)"
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


# --- perplexity -----------------------------------------------------------------------------


class PerplexityParams(_Params):
    file: str | None = Field(default=None, description="a UTF-8 text file; default: the corpus bundled with fairaudit")
    max_length: int = Field(default=512, ge=8, description="tokens per window")
    stride: int | None = Field(
        default=None,
        ge=1,
        description="new tokens scored per window (at most max_length - 1, so that "
        "every scored token has context in its window; default: max_length - 1)",
    )
    batch_size: int = Field(default=4, ge=1)


class Perplexity:
    name = "perplexity"
    description = "perplexity (exp of mean token NLL) on the bundled corpus or a user file, sliding window"
    requires_causal = True
    exclusive = False  # reads only the model it evaluates
    Params = PerplexityParams

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: PerplexityParams, reference=None
    ) -> EvaluationResult:
        path = Path(params.file) if params.file else corpus_path()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PluginError(f"perplexity: cannot read text file {path}: {exc}") from None
        ids = loaded.tokenizer(text)["input_ids"]
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


# --- lm-evaluation-harness ------------------------------------------------------------------

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


class LmEvalParams(_Params):
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

        class QuietHFLM(HFLM):  # lm-eval's own bars would nest inside fairaudit's one line per stage
            def loglikelihood(self, requests, disable_tqdm: bool = False):
                return super().loglikelihood(requests, disable_tqdm=True)

            def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
                return super().loglikelihood_rolling(requests, disable_tqdm=True)

            def generate_until(self, requests, disable_tqdm: bool = False):
                return super().generate_until(requests, disable_tqdm=True)

        model = QuietHFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=params.batch_size)
        import datasets

        # `datasets` pings the hub's S3 bucket to count every load, a local JSON file's too, unless
        # offline: fairaudit sends nothing it was not asked to (docs/trust.md, "Network")
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
        try:
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


# --- factual-knowledge control --------------------------------------------------------------


class FactsParams(_Params):
    file: str | None = Field(
        default=None, description="JSONL of {id, category, prompt, correct, distractors}; default: bundled"
    )
    batch_size: int = Field(default=16, ge=1)


class FactualControl:
    name = "facts"
    description = (
        "factual-knowledge control: facts whose answer depends on a demographic word for factual reasons "
        "(kinship, pronouns, capitals, languages, religious holidays); accuracy and log-probability"
    )
    requires_causal = True
    exclusive = False  # reads only the model it evaluates
    Params = FactsParams

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: FactsParams, reference=None
    ) -> EvaluationResult:
        import json

        path = Path(params.file) if params.file else data_dir() / "facts.jsonl"
        try:
            facts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError) as exc:
            raise PluginError(f"facts: cannot read {path}: {exc}") from None
        requests = [(fact["prompt"], option) for fact in facts for option in [fact["correct"], *fact["distractors"]]]
        scores = iter(loglikelihoods(loaded, requests, params.batch_size))
        accuracy, logprob = {}, {}
        for fact in facts:
            values = [next(scores) for _ in range(1 + len(fact["distractors"]))]
            accuracy[fact["id"]] = float(values[0] > max(values[1:]))
            logprob[fact["id"]] = values[0]
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


# --- embedding fidelity (encoders, and any model against its unpruned reference) -----------


class FidelityParams(_Params):
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


# --- random-selection baseline ----------------------------------------------------------------


class RandomBaselineParams(_Params):
    seeds: int = Field(default=5, ge=1, le=100, description="random selections of the same size per layer")
    split: Literal["heldout", "probe", "all"] = Field(
        default="heldout",
        description="pairs whose output bias is compared "
        "(heldout: held-out templates and imported sentence pairs, which no "
        "selection reads)",
    )
    permutations: int = Field(default=2000, ge=100, le=100_000)
    pairs_per_batch: int = Field(default=8, ge=1)


class RandomBaseline:
    name = "random_baseline"
    description = (
        "did pruning beat chance? |mean output bias| of the pruned model against the unpruned model with the same "
        "number of neurons (and attention heads) per layer removed at random (seeds), one-sided permutation p-value per axis"
    )
    requires_causal = True
    exclusive = True  # masks the unpruned reference
    Params = RandomBaselineParams

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params: RandomBaselineParams, reference=None
    ) -> EvaluationResult:
        from fairaudit.measurement.attribution import head_count, output_bias_values
        from fairaudit.repair.prune import masked, pruned_counts, random_selection

        result = EvaluationResult()
        if reference is None:
            return result  # compares a pruned model with its reference
        found = pruned_counts(loaded)
        if found is None:
            raise PluginError(
                "random_baseline: the model being evaluated carries no neuron map (fairaudit_neuron_map.json); "
                "it compares a model pruned by fairaudit with its unpruned reference."
            )
        counts, head_counts = found
        widths = [reference.adapter.mlp_weights(layer).down.shape[1] for layer in reference.layers]
        heads = head_count(reference) if any(head_counts) else 0
        # the unmasked models' values, where the output_bias evaluator computed them on these weights
        known_before, known_after = recall(reference, LOGLIKELIHOODS), recall(loaded, LOGLIKELIHOODS)
        for suite in suites:
            pairs = [
                pair
                for pair in suite.pairs(None if params.split == "all" else params.split)
                if metrics.output_bias_terms(pair)
            ]
            if (
                params.split == "heldout"
            ):  # an imported data set's sentence pairs are evaluation-only, like held-out templates
                pairs += [pair for pair in suite.pairs("probe") if pair.kind == "sentence"]
            if len(pairs) < 2:
                continue
            before = output_bias_values(reference, pairs, params.pairs_per_batch, known_before)
            after = output_bias_values(loaded, pairs, params.pairs_per_batch, known_after)
            randoms = []
            for seed in range(params.seeds):
                with masked(reference, random_selection(counts, widths, seed, head_counts, heads)):
                    randoms.append(output_bias_values(reference, pairs, params.pairs_per_batch))
            random = torch.stack(randoms)  # [seeds, pairs]
            p_value = metrics.beats_random_p(after, random, params.permutations)
            ids = [pair.pair_id for pair in pairs]
            result.items[(suite.axis, "output_bias_random")] = {
                f"{seed}:{pair_id}": float(value) for seed, row in enumerate(random) for pair_id, value in zip(ids, row)
            }
            abs_before, abs_after = abs(float(before.mean())), abs(float(after.mean()))
            abs_random = float(random.mean(dim=1).abs().mean())
            for metric, value in (
                ("abs_output_bias_before", abs_before),
                ("abs_output_bias_after", abs_after),
                ("abs_output_bias_random", abs_random),
                ("reduction", 1 - abs_after / abs_before if abs_before else math.nan),
                ("random_reduction", 1 - abs_random / abs_before if abs_before else math.nan),
                ("beats_random_p", p_value),
            ):
                result.measurements.append(Measurement(self.name, suite.axis, metric, value, n=len(pairs)))
        return result


@hookimpl
def register_evaluators(register):
    for evaluator in (
        BiasReprobe(),
        OutputBias(),
        Generations(),
        Perplexity(),
        LmEval(),
        FactualControl(),
        Fidelity(),
        RandomBaseline(),
    ):
        register(evaluator)
