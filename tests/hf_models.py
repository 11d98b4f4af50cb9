"""Small random-init Hugging Face models (BERT, GPT-2, a Llama with a gated MLP) saved with ``save_pretrained``
into a folder, each with a tokenizer trained here (the ``tokenizers`` library), and text to evaluate them on.
Nothing is downloaded."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import torch

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "pruning removes the weights that matter least",
    "the sensitivity of each layer to sparsity differs across depth",
    "attention heads and mlp neurons can be removed as structured groups",
    "a small language model predicts the next token of a sentence",
    "every block of a transformer has attention and a feed forward network",
]


def corpus_text(repeat: int = 6) -> str:
    """Lines of text to tokenize: the corpus, repeated in shuffled orders (seeded)."""
    gen = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(repeat):
        lines += [CORPUS[i] for i in torch.randperm(len(CORPUS), generator=gen).tolist()]
    return "\n".join(lines) + "\n"


def _transformers():  # noqa: ANN202
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def bpe_tokenizer(vocab_size: int = 300):  # noqa: ANN201 - PreTrainedTokenizerFast
    """A byte-level BPE tokenizer (GPT-2 and Llama style), trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return _transformers().PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                                   pad_token="<pad>")


def wordpiece_tokenizer(vocab_size: int = 200):  # noqa: ANN201 - PreTrainedTokenizerFast
    """A WordPiece tokenizer (BERT style) with [CLS] ... [SEP] around every text, trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return _transformers().PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def build(kind: str, folder: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
          tokenizer: bool = True) -> Path:
    """Save a random-init model of ``kind`` (``gpt2``, ``llama``, ``bert``, ``bert-cls``, ``bert-mlm``) and its
    tokenizer into ``folder``."""
    t = _transformers()
    torch.manual_seed(seed)
    tok = wordpiece_tokenizer() if kind.startswith("bert") else bpe_tokenizer()
    vocab = len(tok)
    if kind == "gpt2":
        model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=hidden, n_layer=layers,
                                               n_head=heads, initializer_range=0.3, bos_token_id=tok.bos_token_id,
                                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    elif kind == "llama":
        model = t.LlamaForCausalLM(t.LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 8, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=64,
            initializer_range=0.3, pad_token_id=tok.pad_token_id))
    else:
        config = t.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                              intermediate_size=4 * hidden, max_position_embeddings=64, num_labels=3,
                              initializer_range=0.3, pad_token_id=tok.pad_token_id)
        cls = {"bert": t.BertModel, "bert-cls": t.BertForSequenceClassification, "bert-mlm": t.BertForMaskedLM}[kind]
        model = cls(config)
    model.eval().save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def zipped(folder: Path, extra: dict[str, str] | None = None) -> bytes:
    """``folder`` as a zip upload (its files under ``NAME/``), with ``extra`` files (name -> text) beside them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"{folder.name}/{f.name}")
        for name, text in (extra or {}).items():
            z.writestr(f"{folder.name}/{name}", text)
    return buf.getvalue()


def write_jsonl(path: Path, labels: bool = True) -> Path:
    """The corpus as JSON lines with a label per line (its index modulo 3)."""
    rows = [{"text": line, **({"label": i % 3} if labels else {})} for i, line in enumerate(corpus_text(3).split("\n"))
            if line]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
