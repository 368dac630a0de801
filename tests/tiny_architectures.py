"""A tiny random encoder of each supported architecture, saved beside a tokenizer of its own kind.

Each is what a user would download, shrunk: hidden 32, 4 heads, 4 layers (ALBERT: one shared layer
run 4 times), built offline from config classes, with a WordPiece (BERT, DistilBERT, ELECTRA),
byte-level BPE (RoBERTa, ModernBERT) or SentencePiece-Unigram (XLM-R, ALBERT, DeBERTa-v2) tokenizer
made here from a small word list.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "albert", "modernbert")
HIDDEN, HEADS, LAYERS, INTERMEDIATE, POSITIONS = 32, 4, 4, 37, 64
# The words of conftest.tiny_rows (and digits), so the texts split into few pieces.
WORDS = ["negative", "neutral", "positive", "sentence", "number", "context", "good", "bad", "film", "the"]
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids: <s> 0, <pad> 1, </s> 2


def wordpiece_tokenizer(tokenizer_class: type) -> transformers.PreTrainedTokenizerBase:
    pieces = BERT_SPECIALS + WORDS + list(CHARACTERS) + [f"##{c}" for c in CHARACTERS]
    return tokenizer_class(vocab={piece: index for index, piece in enumerate(pieces)})


def _byte_level_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a byte-level BPE trained on the word list (about 300 pieces)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator([" ".join(WORDS)] * 3 + [" ".join(CHARACTERS)], trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def _unigram_pieces(specials: list[str]) -> list[tuple[str, float]]:
    return [(s, 0.0) for s in specials] + [(f"▁{w}", -1.0) for w in WORDS] + [("▁", -3.0)] + [(c, -5.0) for c in CHARACTERS]


def modernbert_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """ModernBERT's kind: byte-level BPE with BERT's special tokens around the text."""
    vocab, merges = _byte_level_bpe(BERT_SPECIALS)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(token, vocab[token]) for token in ("[CLS]", "[SEP]")],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{f"{name}_token": f"[{name.upper()}]" for name in ("pad", "unk", "cls", "sep", "mask")},
    )


TOKENIZERS = {
    "bert": lambda: wordpiece_tokenizer(transformers.BertTokenizer),
    "distilbert": lambda: wordpiece_tokenizer(transformers.DistilBertTokenizer),
    "electra": lambda: wordpiece_tokenizer(transformers.ElectraTokenizer),
    "roberta": lambda: transformers.RobertaTokenizer(*_byte_level_bpe(ROBERTA_SPECIALS)),
    "xlm-roberta": lambda: transformers.XLMRobertaTokenizer(vocab=_unigram_pieces(ROBERTA_SPECIALS[:4]) + [("<mask>", 0.0)]),
    "albert": lambda: transformers.AlbertTokenizer(vocab=_unigram_pieces(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"])),
    "deberta-v2": lambda: transformers.DebertaV2Tokenizer(vocab=_unigram_pieces(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"])),
    "modernbert": modernbert_tokenizer,
}


def tokenizer_for(architecture: str) -> transformers.PreTrainedTokenizerBase:
    return TOKENIZERS[architecture]()


def config_for(architecture: str, tokenizer: transformers.PreTrainedTokenizerBase, **overrides) -> transformers.PretrainedConfig:
    """A tiny config whose special token ids are the tokenizer's."""
    size = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=LAYERS, intermediate_size=INTERMEDIATE)
    if architecture == "distilbert":
        size = dict(dim=HIDDEN, n_heads=HEADS, n_layers=LAYERS, hidden_dim=INTERMEDIATE)
    extra = {
        "roberta": dict(type_vocab_size=1),  # as in roberta-base: one token type
        "xlm-roberta": dict(type_vocab_size=1),
        "electra": dict(embedding_size=16),
        "albert": dict(embedding_size=16),
        "deberta-v2": dict(relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
                           position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0),
        "modernbert": dict(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                           bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id),
    }.get(architecture, {})  # fmt: skip
    return transformers.AutoConfig.for_model(
        architecture,
        vocab_size=len(tokenizer),
        max_position_embeddings=POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        **size,
        **{**extra, **overrides},
    )


def tiny_encoder_dir(path: Path, architecture: str, seed: int = 0, **overrides) -> Path:
    """A random encoder (no head) of `architecture` with its tokenizer, saved like a downloaded model."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer_for(architecture)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    transformers.AutoModel.from_config(config_for(architecture, tokenizer, **overrides)).save_pretrained(path)
    return path


def tiny_classifier(architecture: str, labels: int = 3, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A random classifier of `architecture` in eval mode (its tokenizer's special ids, 4 layers)."""
    import torch

    torch.manual_seed(seed)
    config = config_for(architecture, tokenizer_for(architecture), num_labels=labels, **overrides)
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()
