"""Hugging Face models from a local folder (``hf:PATH``, ``hf:PATH@TASK``): checked, loaded offline, and wrapped
so that every Prunescope pass calls them as any model, one tensor of token ids in and one tensor out.

The folder is what ``save_pretrained`` writes: ``config.json``, the weights (``model.safetensors`` or
``pytorch_model.bin``, sharded or not; ``.bin`` files are read with ``weights_only``) and, for text data, the
tokenizer files. Nothing is ever downloaded (``local_files_only``, ``HF_HUB_OFFLINE``) and no code from the
folder ever runs: a config that asks for custom code (``auto_map``) or names an architecture transformers does
not ship is refused with the reason.

Tasks (``TASKS``), read from the config's architecture and overridable with ``@TASK``:

- ``causal-lm``: ``...ForCausalLM`` / ``...LMHeadModel``; the outputs are next-token scores per position.
- ``encoder``: a bare model (``BertModel``) or a masked LM (``...ForMaskedLM``, its head dropped); the outputs
  are sentence embeddings, the last hidden states averaged over the real tokens.
- ``classification``: ``...ForSequenceClassification``; the outputs are class scores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch
from torch import nn

from analysis.core.data import PAD
from analysis.core.metric_table import CAUSAL_LM, CLASSIFICATION, ENCODER
from analysis.workload.errors import SpecError, short_error

TASKS = (CAUSAL_LM, ENCODER, CLASSIFICATION)
TASK_ALIASES = {"masked-lm": ENCODER, "embedding": ENCODER, "sequence-classification": CLASSIFICATION}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"), ("tokenizer.model",))
_SUFFIXES = ((("ForCausalLM", "LMHeadModel"), CAUSAL_LM), (("ForMaskedLM",), ENCODER),
             (("ForSequenceClassification",), CLASSIFICATION), (("Model",), ENCODER))


def parse_spec(spec: str) -> tuple[Path, str | None]:
    """``hf:PATH`` or ``hf:PATH@TASK`` -> (folder, task or ``None`` for the config's)."""
    body = spec.strip().removeprefix("hf:")
    path, at, task = body.rpartition("@")
    if at and TASK_ALIASES.get(task, task) in TASKS:
        return Path(path), TASK_ALIASES.get(task, task)
    return Path(body), None


def with_task(spec: str, task: str | None) -> str:
    """The spec ``spec`` with its task set to ``task`` (``--task``): ``hf:PATH@TASK``; other specs unchanged."""
    if not task or not spec.strip().startswith("hf:"):
        return spec
    path, _ = parse_spec(spec)
    return f"hf:{path}@{check_task(task)}"


def check_task(task: str) -> str:
    """A task name (or an alias such as ``masked-lm``) as one of ``TASKS``; else a ``SpecError``."""
    name = TASK_ALIASES.get(task, task)
    if name not in TASKS:
        raise SpecError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} (masked-lm is read as encoder)")
    return name


def read_config(folder: Path) -> dict:
    """``config.json`` of a Hugging Face folder, checked before transformers sees it: the folder is complete
    (config and weights) and needs no code of its own."""
    if not folder.is_dir():
        raise SpecError(f"hf:{folder}: no such folder (a Hugging Face model folder holds config.json and the "
                        "weights, as save_pretrained writes them)")
    path = folder / "config.json"
    if not path.is_file():
        raise SpecError(f"hf:{folder} has no config.json: it is not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"hf:{folder}: config.json is not valid JSON ({short_error(exc, 120)})") from None
    if not isinstance(config, dict):
        raise SpecError(f"hf:{folder}: config.json holds {type(config).__name__}, not a configuration object")
    refuse_custom_code(config, f"hf:{folder}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise SpecError(f"hf:{folder} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")
    return config


def refuse_custom_code(config: dict, source: str) -> None:
    """A configuration that needs code from the folder (``auto_map``), or an architecture transformers does not
    ship, is a ``SpecError``: Prunescope never runs a model's own code (no ``trust_remote_code``)."""
    if "auto_map" in config:
        raise SpecError(f"{source} needs custom code from the folder (its config has auto_map: "
                        f"{', '.join(map(str, config['auto_map']))}); Prunescope never runs a model's own code "
                        "(trust_remote_code): use an architecture transformers ships, or export the model to ONNX")
    model_type = config.get("model_type")
    if not model_type:
        raise SpecError(f"{source}: config.json has no model_type, so the architecture is unknown")
    _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise SpecError(f"{source}: transformers has no architecture {model_type!r} (it would need the folder's "
                        "own code, which Prunescope never runs)")


def task_of(config: dict, source: str) -> str:
    """The task the saved architecture was built for (``config.architectures``), e.g. ``GPT2LMHeadModel`` ->
    ``causal-lm``; without one a ``SpecError`` asks for ``@TASK``."""
    for arch in config.get("architectures") or []:
        for suffixes, task in _SUFFIXES:
            if str(arch).endswith(suffixes):
                return task
    raise SpecError(f"{source}: config.json names no architecture Prunescope knows the task of "
                    f"({config.get('architectures')}); give it: hf:PATH@causal-lm, @encoder or @classification")


class TextModel(nn.Module):
    """A Hugging Face model as Prunescope calls every model: token ids (batch, positions) in, with ``PAD`` where
    a sequence is padded (the attention mask), one tensor out (``task``: next-token scores, sentence embeddings
    or class scores).

    The Hugging Face model's own submodules are this module's, so parameters keep their Hugging Face names
    (``transformer.h.0.attn.c_attn.weight``); the model itself is kept beside them to run its forward.
    """

    def __init__(self, hf: nn.Module, task: str) -> None:
        super().__init__()
        self.task = task
        for name, child in hf.named_children():
            self.add_module(name, child)
        for name, p in hf.named_parameters(recurse=False):
            self.register_parameter(name, p)
        object.__setattr__(self, "hf", hf)  # not a submodule: its children are ours already

    def extra_repr(self) -> str:
        return f"task={self.task}, architecture={type(self.hf).__name__}"

    def train(self, mode: bool = True) -> "TextModel":
        super().train(mode)
        self.hf.training = mode
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD
        kwargs = {"use_cache": False, "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)} \
            if self.task == CAUSAL_LM else {}
        out = self.hf(input_ids=ids.clamp(min=0), attention_mask=mask.long(), **kwargs)
        if self.task != ENCODER:
            return out.logits
        hidden = out.last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def attention_heads(self) -> tuple[int, int, int]:
        """(query heads, key/value heads, head size) of every block, from the configuration."""
        config = self.hf.config
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return heads, kv, dim

    def vocabulary(self) -> int:
        """The vocabulary size of the configuration."""
        return int(getattr(self.hf.config, "vocab_size", 0) or 0)

    def label_names(self) -> list[str] | None:
        """A classifier's class names from its configuration (``id2label``), in order."""
        names = getattr(self.hf.config, "id2label", None) or {}
        return [str(names[i]) for i in sorted(names)] if self.task == CLASSIFICATION and names else None


_LOADERS = {CAUSAL_LM: "AutoModelForCausalLM", ENCODER: "AutoModel",
            CLASSIFICATION: "AutoModelForSequenceClassification"}


def load_hf(spec: str) -> TextModel:
    """The model of ``hf:PATH[@TASK]``, float32, on the CPU, in eval mode (offline; no code from the folder)."""
    folder, task = parse_spec(spec)
    config = read_config(folder)
    task = task or task_of(config, f"hf:{folder}")
    transformers = _transformers()
    loader = getattr(transformers, _LOADERS[task])
    try:
        hf = loader.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the folder's
        raise SpecError(f"hf:{folder} could not be loaded as a {task} model: {type(exc).__name__}: "
                        f"{short_error(exc)}") from None
    if task == ENCODER and isinstance(getattr(hf, "pooler", None), nn.Module):
        hf.pooler = None  # the sentence embedding is the mean of the last hidden states: the pooler feeds nothing
    return TextModel(hf.float().eval(), task).eval()


def load_tokenizer(folder: Path) -> object:
    """The folder's tokenizer (offline, never its own code). transformers quietly builds an almost empty one
    when the files are missing, so their presence is checked first."""
    found = next((files for files in TOKENIZER_FILES if all((folder / f).is_file() for f in files)), None)
    if found is None:
        raise SpecError(f"hf:{folder} has no tokenizer files (tokenizer.json, vocab.txt, or vocab.json with "
                        "merges.txt): save the tokenizer with tokenizer.save_pretrained(folder), or give token ids "
                        "(a .pt/.npz file with x)")
    if found == ("tokenizer.model",) and importlib.util.find_spec("sentencepiece") is None:
        raise SpecError(f"hf:{folder} has only a SentencePiece tokenizer.model, and the sentencepiece package is "
                        "not installed: save a tokenizer.json (tokenizer.save_pretrained with a fast tokenizer) "
                        "or give token ids")
    tok_config = folder / "tokenizer_config.json"
    if tok_config.is_file():
        try:
            refuse_tokenizer_code(json.loads(tok_config.read_text()), f"hf:{folder}")
        except json.JSONDecodeError:
            raise SpecError(f"hf:{folder}: tokenizer_config.json is not valid JSON") from None
    try:
        return _transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                             trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"hf:{folder}: the tokenizer could not be loaded: {short_error(exc)}") from None


def refuse_tokenizer_code(config: dict, source: str) -> None:
    if isinstance(config, dict) and "auto_map" in config:
        raise SpecError(f"{source}: the tokenizer needs custom code from the folder (auto_map); Prunescope never "
                        "runs a model's own code: give token ids (a .pt/.npz file with x) instead")


def folder_fingerprint(spec: str) -> str:
    """A hash of what an ``hf:`` folder decides beyond the weights: the task, the configuration and the
    tokenizer files (the weights are hashed with the model)."""
    folder, task = parse_spec(spec)
    h = hashlib.sha256(f"hf:{task or ''}".encode())
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                 "special_tokens_map.json"):
        if (folder / name).is_file():
            h.update(name.encode())
            h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def _transformers():  # noqa: ANN202 - the transformers module
    """transformers, imported on first use (it takes seconds), offline and quiet."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers
