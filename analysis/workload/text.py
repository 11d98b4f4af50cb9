"""Text for Hugging Face models (``hf:`` specs): a text file, or a file of token ids, -> token ids with ``PAD``
padding, tokenized with the model's own tokenizer, and the labels the task needs.

Data specs (with an ``hf:`` model)
    ``text.txt``         a causal LM: the whole text tokenized once and cut into windows of ``seq_len`` tokens
                         (the remainder dropped); other tasks: one sample per non-empty line
    ``data.jsonl``       one JSON object per line with ``text`` and optionally ``label``
    ``data.csv``         a ``text`` column and optionally ``label``
    ``ids.pt``/``.npz``  token ids ``x`` (samples, positions) and optionally labels ``y``; -1 marks padding

Lines and rows are truncated to ``seq_len`` tokens and padded on the right to the longest. A causal LM's labels
are its next tokens (``IGNORE`` where there is none); a classifier's come from the ``label`` column (integers, or
names matched to the model's ``id2label`` or else numbered in sorted order); an encoder needs none.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from analysis.core.data import IGNORE, PAD, EvalData
from analysis.core.metric_table import CAUSAL_LM, CLASSIFICATION
from analysis.workload.data import load_data
from analysis.workload.errors import SpecError, short_error
from analysis.workload.hf import TextModel, load_tokenizer, parse_spec
from analysis.workload.uploads import MAX_UNPACKED_BYTES

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
DEFAULT_SEQ_LEN = 128


def is_text_file(spec: str) -> bool:
    """Whether a data spec names a text file (by its suffix: text has no magic bytes to read)."""
    return Path(spec.strip()).suffix.lower() in TEXT_SUFFIXES


def load_text_data(spec: str, model: TextModel, model_spec: str, seq_len: int | None = None,
                   count: int | None = None) -> EvalData:
    """The eval set of ``spec`` for ``model`` (loaded from ``model_spec``): token ids and the task's labels, in
    sequences of ``seq_len`` tokens (default ``DEFAULT_SEQ_LEN``, or the model's positions if fewer)."""
    limit = max_positions(model)
    seq_len = seq_len if seq_len is not None else min(DEFAULT_SEQ_LEN, limit or DEFAULT_SEQ_LEN)
    check_seq_len(seq_len, model)
    spec = spec.strip()
    if is_text_file(spec):
        ids, labels, names = _from_text_file(Path(spec), model, model_spec, seq_len)
    else:
        data = load_data(spec, count=count)
        ids, labels, names = _token_ids(data.x, model, spec), data.y, data.class_names
    if count is not None:
        ids, labels = ids[:count], None if labels is None else labels[:count]
    return task_data(ids, labels, model, spec, names)


def check_seq_len(seq_len: int, model: TextModel) -> None:
    """``seq_len`` must be positive and within the model's positions (``max_position_embeddings``)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise SpecError(f"the sequence length must be at least 2 tokens, got {seq_len!r}")
    limit = max_positions(model)
    if limit and seq_len > limit:
        raise SpecError(f"sequence length {seq_len} is longer than the model's {limit} positions; lower --seq-len")


def max_positions(model: TextModel) -> int | None:
    """The longest sequence the model's position embeddings allow (``None``: no limit in the configuration)."""
    config = model.hf.config
    return next((int(getattr(config, k)) for k in ("max_position_embeddings", "n_positions")
                 if getattr(config, k, None)), None)


def task_data(ids: torch.Tensor, labels: torch.Tensor | None, model: TextModel, spec: str,
              names: list[str] | None = None) -> EvalData:
    """Token ids as the eval set of ``model``'s task: next-token labels for a causal LM, the given labels for a
    classifier, none for an encoder."""
    if model.task == CAUSAL_LM:
        return EvalData(ids, next_tokens(ids), spec, None, CAUSAL_LM)
    if model.task == CLASSIFICATION:
        return EvalData(ids, labels, spec, names or model.label_names(), CLASSIFICATION)
    return EvalData(ids, None, spec, None, model.task)


def next_tokens(ids: torch.Tensor) -> torch.Tensor:
    """A causal LM's labels: position t predicts token t + 1, where both are real; ``IGNORE`` elsewhere."""
    y = torch.full_like(ids, IGNORE)
    real = (ids[:, :-1] != PAD) & (ids[:, 1:] != PAD)
    y[:, :-1] = torch.where(real, ids[:, 1:], torch.full_like(ids[:, 1:], IGNORE))
    return y


def pad(sequences: list[list[int]]) -> torch.Tensor:
    """Sequences of token ids, right-padded with ``PAD`` to the longest."""
    width = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), width), PAD, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def windows(ids: list[int], seq_len: int, source: str) -> torch.Tensor:
    """A long run of token ids cut into windows of ``seq_len`` (the remainder dropped)."""
    n = len(ids) // seq_len
    if n == 0:
        raise SpecError(f"{source} holds {len(ids)} tokens, fewer than one window of {seq_len}; lower --seq-len")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _from_text_file(path: Path, model: TextModel, model_spec: str,
                    seq_len: int) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    texts, raw_labels = read_texts(path)
    tokenizer = load_tokenizer(parse_spec(model_spec)[0])
    if model.task == CAUSAL_LM and path.suffix.lower() == ".txt":
        whole = tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"]
        return windows(whole, seq_len, str(path)), None, None
    encoded = tokenizer(texts, truncation=True, max_length=seq_len)["input_ids"]
    kept = [i for i, e in enumerate(encoded) if e]
    if not kept:
        raise SpecError(f"{path}: the tokenizer gives no tokens for any of its texts")
    labels, names = class_labels(raw_labels, model, str(path)) if raw_labels is not None else (None, None)
    return pad([encoded[i] for i in kept]), None if labels is None else labels[kept], names


def read_texts(path: Path) -> tuple[list[str], list | None]:
    """The texts of a ``.txt`` (non-empty lines), ``.jsonl`` or ``.csv`` file and its labels (``None`` if none)."""
    if not path.is_file():
        raise SpecError(f"data {path} does not exist")
    if path.stat().st_size > MAX_UNPACKED_BYTES:
        raise SpecError(f"text file {path} is larger than the limit of {MAX_UNPACKED_BYTES >> 20} MB "
                        "(PRUNESCOPE_MAX_UNPACKED_MB)")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path} is not UTF-8 text") from None
    if "\x00" in content:
        raise SpecError(f"{path} is a binary file, not text")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts, labels = [line for line in content.splitlines() if line.strip()], None
    else:
        rows = _jsonl_rows(content, path) if suffix == ".jsonl" else _csv_rows(path)
        texts, labels = _columns(rows, path)
    if not texts:
        raise SpecError(f"{path} holds no text")
    return texts, labels


def _jsonl_rows(content: str, path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path} line {number} is not JSON: {short_error(exc, 100)}") from None
        if not isinstance(row, dict):
            raise SpecError(f"{path} line {number} is not a JSON object with a \"text\" field")
        rows.append(row)
    return rows


def _csv_rows(path: Path) -> list[dict]:
    import pandas as pd

    try:
        return pd.read_csv(path, dtype={"text": str}, keep_default_na=False).to_dict("records")
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's
        raise SpecError(f"{path} is not a readable CSV file: {short_error(exc, 160)}") from None


def _columns(rows: list[dict], path: Path) -> tuple[list[str], list | None]:
    if rows and any("text" not in row for row in rows):
        raise SpecError(f"{path} needs a \"text\" field in every row (and optionally \"label\")")
    texts = [str(row["text"]) for row in rows]
    labelled = [row for row in rows if "label" in row and row["label"] not in ("", None)]
    if labelled and len(labelled) != len(rows):
        raise SpecError(f"{path}: {len(rows) - len(labelled)} of {len(rows)} rows have no label; label every row "
                        "or none")
    return texts, [row["label"] for row in rows] if labelled else None


def class_labels(raw: list, model: TextModel, source: str) -> tuple[torch.Tensor, list[str] | None]:
    """Labels as class indices: integers as they are; names matched to the model's ``id2label``, else numbered
    in sorted order (the names then become the class names)."""
    if all(isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
           for v in raw):
        return torch.tensor([int(v) for v in raw], dtype=torch.long), None
    names = model.label_names() or []
    wanted = [str(v) for v in raw]
    if names and set(wanted) <= set(names):
        return torch.tensor([names.index(v) for v in wanted], dtype=torch.long), names
    classes = sorted(set(wanted))
    return torch.tensor([classes.index(v) for v in wanted], dtype=torch.long), classes


def _token_ids(x: torch.Tensor, model: TextModel, spec: str) -> torch.Tensor:
    """Token ids from a tensor file: integers (samples, positions), -1 for padding, within the vocabulary."""
    if x.is_floating_point() or x.dim() != 2:
        raise SpecError(f"{spec}: an hf: model reads token ids, a 2-D integer tensor x (samples, positions); got "
                        f"{x.dtype} of shape {list(x.shape)}")
    ids = x.long()
    vocab = model.vocabulary()
    low, high = int(ids.min()), int(ids.max())
    if low < PAD or (vocab and high >= vocab):
        raise SpecError(f"{spec}: token ids run from {low} to {high}; the vocabulary has {vocab} (0 to {vocab - 1}, "
                        "-1 for padding)")
    return ids
