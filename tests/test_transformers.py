"""Hugging Face models (``hf:FOLDER``) and text data: loading offline, refusals, tasks and their metrics with
attention masks respected, layers (Conv1D, fused qkv, embeddings), the fast engine through torch.export, and the
CLI. The models are small random-init BERT, GPT-2 and Llama (gated MLP) built from configs in the test."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import weakref
import zipfile
from pathlib import Path

import hf_models
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from analysis.core import metrics
from analysis.core.data import IGNORE, PAD
from analysis.core.granularity import CoupledLayer, schedule_layers
from analysis.core.layers import find_layers
from analysis.core.masks import applied
from analysis.core.metric_table import CAUSAL_LM, CLASSIFICATION, ENCODER, drop_scale
from analysis.core.metrics import dense_pass
from analysis.deploy.export import export
from analysis.report.plots import block_curves, block_heatmap, block_table
from analysis.schedule.allocate import Owl, Target, allocate, outlier_ratios, wanda_scores
from analysis.schedule.schedule import Schedule
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.driver import scan
from analysis.sensitivity.engines import run_layer_fast
from analysis.sensitivity.naive import run_layer_naive
from analysis.workload.errors import SpecError
from analysis.workload.uploads import UploadError, received, text_suffix
from analysis.workload.workload import load_workload

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model folders and the text files, built once for the module."""
    root = tmp_path_factory.mktemp("hf")
    folders = {kind: hf_models.build(kind, root / kind) for kind in ("gpt2", "llama", "bert", "bert-cls")}
    (root / "text.txt").write_text(hf_models.corpus_text())
    hf_models.write_jsonl(root / "rows.jsonl")
    return {**folders, "text": root / "text.txt", "rows": root / "rows.jsonl", "root": root}


def workload(hf: dict, kind: str, data: str = "text", **kw: object):  # noqa: ANN201 - Workload
    return load_workload(f"hf:{hf[kind]}", str(hf[data]), seq_len=kw.pop("seq_len", 16), **kw)


# ------------------------------------------------------------------------------------------ loading and data


def test_tasks_come_from_the_config_and_can_be_overridden(hf: dict) -> None:
    gpt2 = workload(hf, "gpt2")
    assert gpt2.task == CAUSAL_LM and gpt2.model.task == CAUSAL_LM
    vocab = gpt2.model.vocabulary()
    assert gpt2.num_classes == vocab and gpt2.output_shape == (16, vocab)
    assert workload(hf, "bert").task == ENCODER
    cls = workload(hf, "bert-cls", "rows")
    assert cls.task == CLASSIFICATION and cls.num_classes == 3 and cls.data.y is not None
    as_encoder = workload(hf, "gpt2", task="encoder")
    assert as_encoder.task == ENCODER and as_encoder.model_spec.endswith("@encoder")
    assert as_encoder.output_shape == (as_encoder.model.hf.config.n_embd,)


def test_a_causal_lm_reads_a_text_file_as_windows_and_predicts_the_next_tokens(hf: dict) -> None:
    w = workload(hf, "gpt2", seq_len=16)
    tokenizer = hf_models.bpe_tokenizer()
    tokens = tokenizer(hf["text"].read_text().rstrip("\n"), add_special_tokens=False)["input_ids"]
    assert w.data.x.shape == (len(tokens) // 16, 16)
    assert w.data.x.flatten().tolist() == tokens[: len(w.data.x) * 16]
    y = w.data.y
    assert torch.equal(y[:, :-1], w.data.x[:, 1:]) and bool((y[:, -1] == IGNORE).all())


def test_lines_are_padded_and_their_labels_follow_the_real_tokens(hf: dict, tmp_path: Path) -> None:
    (tmp_path / "lines.jsonl").write_text('{"text": "the fox"}\n{"text": "pruning removes the weights"}\n')
    w = load_workload(f"hf:{hf['llama']}", str(tmp_path / "lines.jsonl"), seq_len=16)
    x, y = w.data.x, w.data.y
    short = int((x[0] != PAD).sum())
    assert short < x.shape[1] and bool((x[0, short:] == PAD).all()) and not bool((x[1] == PAD).any())
    assert bool((y[0, short - 1 :] == IGNORE).all()) and torch.equal(y[0, : short - 1], x[0, 1:short])


def test_padding_never_changes_a_sample_s_numbers(hf: dict, tmp_path: Path) -> None:
    """A sample padded inside a batch gives the outputs and sums it gives alone: every metric respects the
    attention mask (a causal LM's next-token sums, an encoder's mean-pooled embedding)."""
    texts = ["the quick brown fox jumps over the lazy dog", "the fox", "attention heads and mlp neurons"]
    (tmp_path / "lines.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    for kind in ("gpt2", "llama", "bert"):
        w = load_workload(f"hf:{hf[kind]}", str(tmp_path / "lines.jsonl"), seq_len=16)
        together, sums = dense_pass(w.model, w.data.x, w.data.y, 8, task=w.task)
        alone = metrics.Sums()
        for i in range(len(texts)):
            real = w.data.x[i][w.data.x[i] != PAD].view(1, -1)
            y = None if w.data.y is None else w.data.y[i, : real.shape[1]].view(1, -1)
            out, part = dense_pass(w.model, real, y, 1, task=w.task)
            assert torch.allclose(out[0], together[i, : real.shape[1]] if w.task == CAUSAL_LM else together[i],
                                  atol=1e-4), kind
            alone = alone + part
        assert sums.n == alone.n and sums.correct == alone.correct and sums.cos_sum == alone.cos_sum, kind
        assert sums.loss_sum == pytest.approx(alone.loss_sum, rel=1e-5), kind
    assert sums.n == len(texts)  # the encoder: one embedding per sample


def test_metrics_of_each_task(hf: dict) -> None:
    lm = scan(workload(hf, "gpt2"), ScanConfig(sparsities=(0.5,), layers=("transformer.h.0.mlp.c_fc",)))
    base = lm.meta["baseline"]
    assert base["perplexity"] == pytest.approx(math.exp(base["loss"])) and base["agreement"] == 1.0
    assert lm.default_metric == "perplexity" and "perplexity" in lm.table.columns
    assert set(lm.table["n"]) == {int((workload(hf, "gpt2").data.y != IGNORE).sum())}
    enc = scan(workload(hf, "bert"), ScanConfig(sparsities=(0.5,), layers=("encoder.layer.0.intermediate.dense",)))
    assert enc.default_metric == "embedding_cosine" and enc.meta["baseline"]["embedding_cosine"] == pytest.approx(1.0)
    row = enc.table[enc.table["sparsity"] == 0.5].iloc[0]
    assert 0.0 < row["embedding_cosine"] < 1.0 and row["agreement"] is None


# ------------------------------------------------------------------------------------------------- refusals


def test_incomplete_and_foreign_folders_are_refused_with_the_reason(hf: dict, tmp_path: Path) -> None:
    text = str(hf["text"])
    with pytest.raises(SpecError, match="no such folder"):
        load_workload(f"hf:{tmp_path / 'nowhere'}", text)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match="no config.json"):
        load_workload(f"hf:{empty}", text)
    (empty / "config.json").write_text((hf["gpt2"] / "config.json").read_text())
    with pytest.raises(SpecError, match="holds no weights"):
        load_workload(f"hf:{empty}", text)
    custom = tmp_path / "custom"
    custom.mkdir()
    config = json.loads((hf["gpt2"] / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling.MyModel"}}))
    (custom / "model.safetensors").write_bytes((hf["gpt2"] / "model.safetensors").read_bytes())
    with pytest.raises(SpecError, match="custom code"):
        load_workload(f"hf:{custom}", text)
    (custom / "config.json").write_text(json.dumps({**config, "model_type": "my_secret_lm"}))
    with pytest.raises(SpecError, match="no architecture 'my_secret_lm'"):
        load_workload(f"hf:{custom}", text)


def test_text_needs_tokenizer_files_and_token_ids_do_not(hf: dict, tmp_path: Path) -> None:
    bare = hf_models.build("gpt2", tmp_path / "bare", tokenizer=False)
    with pytest.raises(SpecError, match="no tokenizer files"):
        load_workload(f"hf:{bare}", str(hf["text"]))
    ids = torch.randint(0, 50, (6, 12), generator=torch.Generator().manual_seed(0))
    ids[0, 8:] = PAD
    torch.save({"x": ids}, tmp_path / "ids.pt")
    w = load_workload(f"hf:{bare}", str(tmp_path / "ids.pt"))
    assert torch.equal(w.data.x, ids) and int((w.data.y != IGNORE).sum()) == 6 * 11 - 4
    torch.save({"x": ids + 10_000}, tmp_path / "big.pt")
    with pytest.raises(SpecError, match="vocabulary"):
        load_workload(f"hf:{bare}", str(tmp_path / "big.pt"))
    with pytest.raises(SpecError, match="is text"):
        load_workload("sample:digits-mlp", str(hf["text"]))


# ---------------------------------------------------------------------------------------------------- layers


def test_projections_are_found_in_their_blocks_and_embeddings_are_left_out(hf: dict) -> None:
    gpt2 = workload(hf, "gpt2")
    left_out: dict[str, str] = {}
    layers = {l.name: l for l in find_layers(gpt2.model, gpt2.data.x[:1], left_out)}
    fused = layers["transformer.h.0.attn.c_attn"]
    hidden = gpt2.model.hf.config.n_embd
    assert fused.kind == "Conv1D" and fused.transposed and fused.shape == (3 * hidden, hidden)
    assert tuple(fused.weight(gpt2.model).shape) == (hidden, 3 * hidden)
    assert set(left_out) == {"transformer.wte", "transformer.wpe"} and "embedding" in left_out["transformer.wte"]
    every = {l.name: l for l in find_layers(gpt2.model, gpt2.data.x[:1], include_embeddings=True)}
    assert every["transformer.wte"].kind == "Embedding (tied to the output head)"
    llama = workload(hf, "llama")
    left_out = {}
    names = [l.name for l in find_layers(llama.model, llama.data.x[:1], left_out)]
    assert names[:7] == [f"model.layers.0.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                          "mlp.down_proj")]
    assert "lm_head" in left_out and "vocabulary" in left_out["lm_head"]


def test_masks_of_a_conv1d_prune_its_output_rows(hf: dict) -> None:
    """The activation criterion compares within each output row (Wanda); a Conv1D's rows are its stored columns."""
    w = workload(hf, "gpt2")
    ctx = prepare(w, ScanConfig(criterion="activation", sparsities=(0.5,), layers=("transformer.h.0.attn.c_attn",)))
    layer = ctx.layers[0]
    (param, stored), = layer.masks(ctx.masks_for(layer)[1]).items()
    assert param == layer.param_name and stored.shape == layer.weight(w.model).shape
    pruned_per_output = (~stored).sum(dim=0)
    assert set(pruned_per_output.tolist()) == {layer.shape[1] // 2}


# ------------------------------------------------------------------------------------------------- engines


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert-cls"])
def test_the_fast_engine_traces_with_torch_export_and_gives_the_naive_numbers(hf: dict, kind: str) -> None:
    w = workload(hf, kind, "rows" if kind == "bert-cls" else "text")
    ctx = prepare(w, ScanConfig(sparsities=(0.3, 0.7), chunk_size=5))
    for layer in ctx.layers[:3] + ctx.layers[-1:]:
        fast, naive = run_layer_fast(ctx, layer), run_layer_naive(ctx, layer)
        for a, b in zip(fast.rows, naive.rows):
            assert a["n"] == b["n"] and a["agree"] == b["agree"] and a["correct"] == b["correct"], layer.name
            assert a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-5, abs=1e-6), layer.name
    assert ctx.fast.gm.traced_by == "torch.export"


def test_dense_outputs_too_large_to_keep_are_recomputed_with_the_same_numbers(hf: dict, monkeypatch) -> None:
    w = workload(hf, "gpt2")
    config = ScanConfig(sparsities=(0.5,), layers=("transformer.h.1.mlp.c_fc", "transformer.h.0.attn.c_proj"))
    kept = prepare(w, config)
    monkeypatch.setattr(metrics, "DENSE_CACHE_BYTES", 0)
    lazy = prepare(w, config)
    assert kept.dense_logits is not None and lazy.dense_logits is None
    assert lazy.baseline().to_dict() == pytest.approx(kept.baseline().to_dict())
    for layer in kept.layers:
        want = run_layer_naive(kept, layer).rows
        for engine in (run_layer_naive, run_layer_fast):
            for a, b in zip(engine(lazy, layer).rows, want):
                assert a["agree"] == b["agree"] and a["loss_sum"] == pytest.approx(b["loss_sum"], rel=1e-6)


class LargestTensor(TorchDispatchMode):
    """The bytes of the largest tensor any operation makes while it is on (a view counts its own elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("engine", [run_layer_naive, run_layer_fast])
def test_a_language_model_cell_makes_no_tensor_larger_than_one_batch_of_outputs(hf: dict, monkeypatch,
                                                                                engine) -> None:
    """At the issue's size (256 windows of 128 tokens, a 50257-token vocabulary) one batch's next-token scores
    are 257 MB and the whole eval set's 6.6 GB: a cell must hold neither the dense scores of the whole set nor
    float64 copies of a batch's scores (the GPT-2-sized scan peaked at 7.25 GB with 16 windows). Structural: the
    dense scores are computed per batch (never gathered), the measurement works on blocks of predictions, and
    the largest tensor of a cell is one batch's (a fast-engine chunk's, all variants) float32 scores."""
    monkeypatch.setattr(metrics, "DENSE_CACHE_BYTES", 0)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 4096)
    w = workload(hf, "gpt2")
    ctx = prepare(w, ScanConfig(sparsities=(0.3, 0.7), batch_size=8, chunk_size=4))
    assert ctx.dense_logits is None and len(ctx.x) > 8
    spans = []
    live: list = []
    computed = ctx.dense

    def dense(start: int, stop: int) -> torch.Tensor:
        assert sum(r() is not None for r in live) <= 1, "more than one batch of dense scores alive at once"
        spans.append(stop - start)
        out = computed(start, stop)
        live.append(weakref.ref(out))
        return out

    monkeypatch.setattr(ctx, "dense", dense)
    if engine is run_layer_fast:
        run_layer_fast(ctx, ctx.layers[0])  # the trace, outside the count
    layer = ctx.layers[len(ctx.layers) // 2]
    with LargestTensor() as mode:
        result = engine(ctx, layer)
    variants = 3 if engine is run_layer_fast else 1  # the fast engine runs both masks and the dense weight at once
    batch = ctx.fast.chunk if engine is run_layer_fast else ctx.config.batch_size
    assert 0 < mode.largest <= variants * batch * ctx.sample_bytes
    assert result.rows[1]["n"] == int((ctx.y != IGNORE).sum())
    if engine is run_layer_naive:
        assert spans and max(spans) <= ctx.config.batch_size


# ----------------------------------------------------------------------------------------------------- CLI


def run_cli(*args: object, home: Path) -> subprocess.CompletedProcess:
    env = {"PRUNESCOPE_HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def test_cli_scans_a_causal_lm_on_text(hf: dict, tmp_path: Path) -> None:
    out = tmp_path / "scan"
    done = run_cli("scan", "--model", f"hf:{hf['gpt2']}", "--data", hf["text"], "--seq-len", "16",
                   "--sparsities", "0.5", "--layers", "transformer.h.0.mlp.c_fc,transformer.wte", "--out", out,
                   home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "scan.json").read_text())
    assert meta["task"] == CAUSAL_LM and meta["input_shape"] == [16] and meta["engine"]["traced_by"] == "torch.export"
    assert [l["name"] for l in meta["layers"]] == ["transformer.wte", "transformer.h.0.mlp.c_fc"]
    assert "dense perplexity" in done.stdout
    wrong = run_cli("scan", "--model", f"hf:{hf['gpt2']}", "--data", hf["text"], "--seq-len", "4096", "--out",
                    tmp_path / "no", home=tmp_path / "home")
    assert wrong.returncode == 2 and "positions" in wrong.stderr and "Traceback" not in wrong.stderr


# ------------------------------------------------------------------------------ heads, neurons and OWL


def test_a_pruned_head_takes_its_q_k_v_rows_and_o_columns_with_it(hf: dict) -> None:
    w = workload(hf, "gpt2")
    heads = [l for l in schedule_layers(w.model, w.data.x[:1], "heads") if isinstance(l, CoupledLayer)]
    assert [l.name for l in heads] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    layer = heads[0]
    assert layer.shape[0] == 4  # 4 heads of 8 dimensions; q, k and v fused in GPT-2's c_attn (Conv1D)
    keep = torch.tensor([True, False, True, True]).view(4, 1).expand(4, len(layer.parts))
    masks = layer.masks(keep)
    qkv, o = masks["transformer.h.0.attn.c_attn.weight"], masks["transformer.h.0.attn.c_proj.weight"]
    # Conv1D weights are (in, out): the head's q, k and v outputs are columns of c_attn, its o inputs rows of c_proj
    gone = [c for c in range(96) if not qkv[:, c].any()]
    assert gone == [*range(8, 16), *range(40, 48), *range(72, 80)] and qkv.sum() == 32 * (96 - 24)
    assert [r for r in range(32) if not o[r].any()] == list(range(8, 16)) and o.sum() == 32 * 24
    # once its o columns are gone, the head's q/k/v rows carry nothing: pruning them too changes no output
    only_o = {"transformer.h.0.attn.c_proj.weight": o}
    x = w.data.x[:4]
    with torch.no_grad(), applied(w.model, only_o):
        want = w.model(x)
    with torch.no_grad(), applied(w.model, masks):
        assert torch.allclose(w.model(x), want, atol=1e-5)


def test_neurons_couple_gate_and_up_rows_with_down_columns(hf: dict) -> None:
    w = workload(hf, "llama")
    neurons = [l for l in schedule_layers(w.model, w.data.x[:1], "neurons") if isinstance(l, CoupledLayer)]
    assert len(neurons) == 2 and {p.layer.name.rsplit(".", 1)[1] for p in neurons[0].parts} == {
        "gate_proj", "up_proj", "down_proj"}
    width = neurons[0].shape[0]
    keep = (torch.arange(width) % 2 == 0).view(width, 1).expand(width, 3)
    masks = neurons[0].masks(keep)
    for name, mask in masks.items():
        pruned = ~mask.any(dim=1) if "down_proj" not in name else ~mask.any(dim=0)
        assert pruned.tolist() == [i % 2 == 1 for i in range(width)], name


def test_owl_spreads_sparsity_by_outliers_and_keeps_the_target(hf: dict) -> None:
    w = workload(hf, "llama")
    layers = find_layers(w.model, w.data.x[:1])
    scores = wanda_scores(w.model, layers, w.data, samples=8)
    ratios = outlier_ratios(layers, scores, m=3.0)
    assert set(ratios) == {"model.layers.0", "model.layers.1"}
    schedule = allocate("owl", layers, Target("sparsity", 0.5), scores=scores, owl=Owl(lam=0.1, m=3.0))
    per_block = {b: [schedule.sparsities[l.name] for l in layers if l.name.startswith(b + ".")] for b in ratios}
    assert schedule.meta["totals"]["global_sparsity"] == pytest.approx(0.5, abs=0.01)
    more, fewer = sorted(ratios, key=ratios.get, reverse=True)
    assert ratios[more] > ratios[fewer] and max(per_block[more]) < min(per_block[fewer])  # more outliers: less
    assert max(per_block[fewer]) - min(per_block[more]) == pytest.approx(0.2, abs=0.01)  # a spread of 2 lambda
    with pytest.raises(ValueError, match="lambda"):
        Owl(lam=0.6)


# ------------------------------------------------------------------------------------ views and uploads


def test_block_views_agree_with_the_layer_table(hf: dict) -> None:
    w = workload(hf, "llama")
    profile = scan(w, ScanConfig(sparsities=(0.5,)))
    table = block_table(profile)
    assert list(dict.fromkeys(table["block"])) == ["model.layers.0", "model.layers.1"]
    assert set(table["column"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    fig = block_heatmap(profile, 0.5)
    assert list(fig.data[0].x) == ["q", "k", "v", "o", "gate", "up", "down"]
    drops = profile.drop(profile.default_metric)
    scale, _ = drop_scale(profile.default_metric)
    for i, block in enumerate(fig.data[0].y):
        for j, column in enumerate(fig.data[0].x):
            name = fig.data[0].customdata[i][j]
            want = drops[(drops["layer"] == name) & (drops["sparsity"] == 0.5)]["drop"].item() * scale
            assert name.startswith(block) and fig.data[0].z[i][j] == pytest.approx(want)
    assert {a.text for a in block_curves(profile).layout.annotations} == {"model.layers.0", "model.layers.1"}
    with pytest.raises(ValueError, match="not measured"):
        block_heatmap(profile, 0.3)


def hf_zip(folder: Path, extra: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"model/{f.name}")
        for name, content in extra.items():
            z.writestr(f"model/{name}", content)
    return buf.getvalue()


def test_a_zipped_folder_uploads_without_its_code_and_text_is_typed_by_content(hf: dict, tmp_path: Path) -> None:
    data = hf_zip(hf["gpt2"], {"modeling_evil.py": b"raise SystemExit", "notes.md": b"x"})
    with received(data, "anything.bin", "model") as upload:
        assert upload.kind == "hf-zip" and (upload.path / "config.json").is_file()
        assert not list(upload.path.glob("*.py")) and not list(upload.path.glob("*.md"))
        loaded = load_workload(f"hf:{upload.path}", str(hf["text"]), seq_len=16)
        assert loaded.task == CAUSAL_LM and len(loaded.data) == len(workload(hf, "gpt2").data)
    bare = hf_zip(hf["gpt2"], {"pytorch_model.bin": b"\x80\x04K\x01."})
    with pytest.raises(UploadError, match="pytorch_model.bin is a pickle"):
        with received(bare, "m.zip", "model"):
            pass
    assert text_suffix(hf["rows"].read_bytes()) == ".jsonl"
    assert text_suffix(b"text,label\nhello,1\n") == ".csv" and text_suffix(b"one line\nanother\n") == ".txt"
    for content, why in ((b"\x00\x01", "binary"), (b"\xff\xfe", "UTF-8"), (b"  \n", "empty")):
        with pytest.raises(UploadError, match=why):
            text_suffix(content)


def test_a_head_schedule_exports_masked_and_matches_in_onnx_runtime_on_the_eval_text(hf: dict,
                                                                                      tmp_path: Path) -> None:
    w = workload(hf, "gpt2")
    schedule = Schedule({"transformer.h.0.attn": 0.5, "transformer.h.1.attn": 0.25}, granularity="heads")
    report = export(w.model, schedule, w.data, tmp_path / "gpt2.onnx", measure_latency=False)
    assert report.mode == "masked" and all(v.passed for v in report.verifications)
    assert report.verifications[0].samples == len(w.data)  # every window of the eval text
    rows = report.layers.set_index("layer")
    for block, share in (("transformer.h.0", 0.5), ("transformer.h.1", 0.25)):
        for part in ("attn.c_attn", "attn.c_proj"):
            row = rows.loc[f"{block}.{part}"]
            assert row.requested == share and row.onnx_zero_fraction == pytest.approx(share, abs=1e-6)
    assert rows.loc["transformer.h.0.mlp.c_fc"].onnx_zero_fraction == 0.0
