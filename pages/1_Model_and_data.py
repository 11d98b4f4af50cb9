"""Model & data: pick a bundled sample, a torchvision architecture, an uploaded file or a Hugging Face folder (a
zip), and an eval set (text for a Hugging Face model).

Uploads are data, never code: ``analysis.uploads`` types them by content and limits their size, then they are
written to a file and read by ``analysis.workload`` with pickling off.
"""

import streamlit as st

from analysis.core.layers import layer_table
from analysis.report import plots
from analysis.workload import samples
from analysis.workload.errors import SpecError
from analysis.workload.uploads import UploadError
from ui import common, uploads

spec = common.header("Model & data")
left, right = st.columns(2)

with left:
    st.subheader("Model")
    model_kind = st.radio("Model source", ["Bundled sample", "torchvision architecture", "Upload a model file",
                                           "Hugging Face folder (.zip)"], key="model_kind")
    model_spec, model_error, seq_len = None, None, None
    try:
        if model_kind == "Bundled sample":
            names = samples.sample_names()
            current = spec.model.removeprefix("sample:")
            name = st.selectbox("Sample", names, index=names.index(current) if current in names else 0)
            model_spec = f"sample:{name}"
        elif model_kind == "torchvision architecture":
            archs = common.torchvision_archs()
            arch = st.selectbox("Architecture", archs, index=archs.index("resnet18") if "resnet18" in archs else 0)
            weights = st.file_uploader("Weights (optional): a state dict (.pth, .pt, .bin, .safetensors); "
                                       "without it the weights are random. The content decides, not the name")
            model_spec = f"torchvision:{arch}"
            if weights is not None:
                model_spec += f"={uploads.save_upload(weights.name, weights.getvalue(), 'weights')}"
        elif model_kind == "Hugging Face folder (.zip)":
            upload = st.file_uploader("A zip of the folder save_pretrained wrote: config.json, the weights "
                                      "(.safetensors or .bin) and the tokenizer files. Only those are extracted; a "
                                      "model that needs its own code (auto_map) is refused")
            task = st.selectbox("Task", ["from the config", *common.HF_TASKS],
                                help="causal-lm: perplexity and next-token agreement; encoder (also masked LMs): "
                                     "cosine of the mean-pooled sentence embeddings to the dense model's; "
                                     "classification: accuracy")
            seq_len = int(st.number_input("Tokens per sequence", 2, 8192, 128, step=16,
                                          help="a text file for a causal LM is cut into windows of this many "
                                               "tokens; lines and rows are truncated to it"))
            if upload is not None:
                folder = uploads.save_hf_zip(upload.name, upload.getvalue())
                model_spec = f"hf:{folder}" + ("" if task == "from the config" else f"@{task}")
        else:
            if uploads.code_uploads_allowed():
                st.warning("This server takes TorchScript and torch.export (.pt2) uploads (it was started with "
                           "--allow-code-uploads): they are programs, and running them runs code from the file "
                           "with this server's rights. Upload only models you trust.")
                label = "ONNX (.onnx), TorchScript (.pt, .ts) or torch.export (.pt2)"
            else:
                label = ("ONNX (.onnx). TorchScript and .pt2 files are programs (they run code), taken only by a "
                         "dashboard started with --allow-code-uploads; pickled models never")
            upload = st.file_uploader(label + ". The content decides, not the name")
            if upload is not None:
                model_spec = str(uploads.save_upload(upload.name, upload.getvalue(), "model"))
    except (SpecError, UploadError) as exc:
        model_error = str(exc)

with right:
    st.subheader("Data")
    data_kind = st.radio("Data source", ["Bundled digits", "Random inputs (no labels)", "Upload tensors (.pt, .npz)",
                                         "Upload images (.zip of class folders)",
                                         "Upload text (.txt, .jsonl, .csv)"], key="data_kind")
    data_spec, data_error, input_size = None, None, 224
    try:
        if data_kind == "Bundled digits":
            data_spec = st.selectbox("Split", ["sample:digits", "sample:digits-train"],
                                     help="sample:digits is the held-out split the samples never saw in training")
        elif data_kind == "Random inputs (no labels)":
            shape = st.text_input("Input shape (CxHxW)", "3x32x32")
            data_spec = f"random:{shape.strip()}"
        elif data_kind == "Upload tensors (.pt, .npz)":
            upload = st.file_uploader("A tensor x (N, ...) or a dict with x and optional labels y (.pt, .npz)")
            if upload is not None:
                data_spec = str(uploads.save_upload(upload.name, upload.getvalue(), "tensors"))
        elif data_kind == "Upload text (.txt, .jsonl, .csv)":
            upload = st.file_uploader("Text for a Hugging Face model: plain text (one sample per line; a causal LM "
                                      "reads it whole, in windows), JSON lines or a CSV with a text column and "
                                      "optionally a label")
            if upload is not None:
                data_spec = str(uploads.save_text(upload.name, upload.getvalue()))
        else:
            upload = st.file_uploader("A zip of an image folder: one sub-folder per class")
            input_size = st.number_input("Resize and crop to (pixels)", 8, 1024, 224, step=8)
            if upload is not None:
                data_spec = str(uploads.save_image_zip(upload.name, upload.getvalue()))
    except (SpecError, UploadError) as exc:
        data_error = str(exc)
    count = st.number_input("Samples to use (0 = all; random inputs: how many)", 0, 1_000_000,
                            spec.count or 0, step=64)

for error in (model_error, data_error):
    if error:
        st.error(error)
refused = bool(model_error or data_error)  # a refused weights upload must not fall back to random weights
if st.button("Use this model and data", type="primary", disabled=refused or not (model_spec and data_spec)):
    chosen = common.WorkloadSpec(model_spec, data_spec, int(count) or None, int(input_size), seq_len)
    try:
        common.try_workload(chosen)
    except Exception as exc:  # noqa: BLE001 - a user's file may fail in any way; the page says how and stays up
        st.error(f"Cannot use {chosen.label}: {common.load_error(exc)}")
    else:
        common.set_spec(chosen)
        st.session_state["workload_note"] = f"Now analysing {chosen.label}."
        st.rerun()  # the header's caption, drawn before the button, names the new workload too
elif not (model_spec and data_spec) and not (model_error or data_error):
    st.info("Upload a file (or pick a bundled one) for both the model and the data.")
if note := st.session_state.pop("workload_note", None):
    st.success(note)

st.divider()
st.subheader(f"Prunable layers of {spec.label}")
spec, workload, layers = common.workload_or_stop()
table = common.summary_table(layers)
cols = st.columns(4)
cols[0].metric("prunable layers", len(layers))
cols[1].metric("parameters in them", f"{int(table['params'].sum()):,}")
cols[2].metric({"causal-lm": "vocabulary", "encoder": "embedding size"}.get(workload.task, "classes"),
               workload.num_classes)
cols[3].metric("eval samples", f"{len(workload.data):,}" + ("" if workload.data.labelled else " (no labels)"))
st.dataframe(table, hide_index=True, width="stretch")
left_out = common.left_out_layers(spec)
if left_out:
    st.caption("Listed but left out of scans by default (the Sensitivity page can include them): "
               + "; ".join(f"**{name}**: {why.split(':')[0]}" for name, why in left_out.items()))
st.plotly_chart(plots.layer_summary_bar(layer_table(layers)), key="layer-bar")
