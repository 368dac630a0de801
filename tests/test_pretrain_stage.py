"""The `pretrain` stage on tiny runs: an English teacher further pretrained, a Chinese BERT from scratch."""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizerFast

from tiny_architectures import tiny_encoder_dir

from distill.data.mlm import MaskingCollator
from distill.data.tokenize import TextEncoder
from distill.models.teacher import build_classifier, load_tokenizer
from distill.pipeline import LOGGER_NAME, Run
from distill.recipe import load_recipe
from distill.stages import pretrain

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "big", "small", "red", "blue"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "good", "bad", "##s", "##ly"]
ZH_CORPUS = ["我们热爱北京天安门", "中国人民解放军进入北京", "经济发展需要科学技术", "人民群众的生活水平不断提高",
             "北京大学的学生参观天安门广场", "今天天气很好我们去公园"]
# 40 distinct review-like texts, each ending in a character of its own, so split membership shows.
ZH_REVIEWS = [(f"这本书很好看{chr(0x5400 + i)}" if i % 2 else f"质量太差不推荐{chr(0x5400 + i)}", "pos" if i % 2 else "neg")
              for i in range(40)]


@pytest.fixture(autouse=True, scope="module")
def _detach_run_logs():
    """Runs attach file handlers to the distill logger and stop propagation; undo that afterwards."""
    logger = logging.getLogger(LOGGER_NAME)
    propagate = logger.propagate
    yield
    for handler in [h for h in logger.handlers if getattr(h, "_distill_run", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = propagate


def english_sentence(rng: random.Random) -> str:
    """'the big cat sat on a mat': a fixed grammar, so masked words are predictable."""
    return " ".join([rng.choice(["the", "a"]), rng.choice(["big", "small", "red", "blue"]), rng.choice(["cat", "dog"]),
                     rng.choice(["sat", "ran"]), rng.choice(["on", "under"]), rng.choice(["the", "a"]),
                     rng.choice(["mat", "tree"])])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny English BERT encoder with its WordPiece tokenizer, as a local teacher directory."""
    path = tmp_path_factory.mktemp("teacher")
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(path))
    return path


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def english_run(tmp_path: Path, teacher_dir: Path) -> Run:
    """150 corpus sentences and 40 labelled rows; 60 steps of 16 texts at a high rate."""
    rng = random.Random(0)
    sentences = list(dict.fromkeys(english_sentence(rng) for _ in range(600)))
    (tmp_path / "corpus.txt").write_text("\n".join(sentences[:150]) + "\n", encoding="utf-8")
    rows = [(f"{sentence} good" if i % 2 else f"{sentence} bad", "pos" if i % 2 else "neg")
            for i, sentence in enumerate(sentences[150:190])]
    data = write_csv(tmp_path / "task.csv", rows)
    recipe = f"""
[run]
out_dir = "{(tmp_path / 'runs').as_posix()}"
device = "cpu"
[task]
dataset = "{data.as_posix()}"
max_length = 16
[teacher]
model = "{teacher_dir.as_posix()}"
[stages.pretrain]
corpus = ["{(tmp_path / 'corpus.txt').as_posix()}"]
max_steps = 60
batch_size = 16
lr = 3e-3
warmup_ratio = 0.0
checkpoint_every = 5
[export]
enabled = false
[report]
enabled = false
"""
    (tmp_path / "en.toml").write_text(recipe, encoding="utf-8")
    return Run(load_recipe(tmp_path / "en.toml"))


@pytest.fixture(scope="module")
def english_mlm(tmp_path_factory, teacher_dir) -> Run:
    run = english_run(tmp_path_factory.mktemp("en"), teacher_dir)
    run.execute(["prepare", "pretrain"])
    return run


@pytest.fixture(scope="module")
def chinese_run(tmp_path_factory) -> Run:
    tmp_path = tmp_path_factory.mktemp("zh")
    (tmp_path / "corpus.txt").write_text("\n".join(ZH_CORPUS * 3) + "\n", encoding="utf-8")
    data = write_csv(tmp_path / "reviews.csv", ZH_REVIEWS)
    recipe = f"""
[run]
out_dir = "{(tmp_path / 'runs').as_posix()}"
device = "cpu"
[task]
dataset = "{data.as_posix()}"
language = "zh"
max_length = 24
[stages.pretrain]
from_scratch = true
corpus = ["{(tmp_path / 'corpus.txt').as_posix()}"]
vocab_min_freq = 1
layers = 2
hidden = 32
heads = 2
intermediate = 48
max_steps = 4
batch_size = 8
[stages.finetune]
max_steps = 3
batch_size = 8
[export]
enabled = false
[report]
enabled = false
"""
    (tmp_path / "zh.toml").write_text(recipe, encoding="utf-8")
    run = Run(load_recipe(tmp_path / "zh.toml"))
    run.execute(["prepare", "pretrain", "finetune"])
    return run


def stage_metrics(run: Run) -> dict:
    return json.loads((run.dir / "mlm" / "metrics.json").read_text(encoding="utf-8"))


def test_further_pretraining_lowers_the_held_out_loss(english_mlm):
    metrics = stage_metrics(english_mlm)
    assert metrics["steps"] == 60
    assert metrics["held_out_loss"] < 0.6 * metrics["initial_held_out_loss"]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["held_out_loss"]), rel=1e-6)
    assert metrics["vocab_size"] == len(VOCAB)
    # 150 corpus sentences + 32 training rows (80 % of 40); 5 % of them is below the minimum held out
    assert metrics["corpus_texts"] + metrics["held_out_texts"] == 150 + 32
    assert metrics["held_out_texts"] == pretrain.HELD_OUT_MIN


def test_mlm_dir_loads_as_a_classifier_with_the_pretrained_encoder(english_mlm, teacher_dir):
    mlm_dir = english_mlm.dir / "mlm"
    saved = load_file(str(mlm_dir / "model.safetensors"))
    original = load_file(str(teacher_dir / "model.safetensors"))
    classifier = build_classifier(mlm_dir, ["neg", "pos"], "cls")
    encoder = {name: tensor for name, tensor in classifier.bert.state_dict().items() if not name.startswith("pooler.")}
    assert set(encoder) == {name for name in saved if not name.startswith("pooler.")}
    for name, tensor in encoder.items():
        assert torch.equal(tensor, saved[name]), name
    word_embeddings = "embeddings.word_embeddings.weight"
    assert not torch.allclose(saved[word_embeddings], original[word_embeddings])  # training changed them
    ids = TextEncoder.from_pretrained_dir(mlm_dir, 16).encode_one("the cat sat")
    assert ids == [VOCAB.index(token) for token in ("[CLS]", "the", "cat", "sat", "[SEP]")]


def test_each_batch_is_masked_from_its_seed_and_sample_indices(teacher_dir):
    collator = MaskingCollator(load_tokenizer(teacher_dir), mask_prob=0.3, max_length=16)
    collate = pretrain.seeded_masking(collator, seed=1)
    texts = [english_sentence(random.Random(i)) for i in range(8)]
    first = collate(list(enumerate(texts)))
    collate(list(enumerate(reversed(texts))))  # draws in between do not carry over
    again = collate(list(enumerate(texts)))
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["input_ids"], again["input_ids"])
    # the same texts under other sample indices (another epoch's batch) get other masks
    other = collate([(index + 8, text) for index, text in enumerate(texts)])
    assert not torch.equal(first["labels"], other["labels"])
    other_seed = pretrain.seeded_masking(collator, seed=2)(list(enumerate(texts)))
    assert not torch.equal(first["labels"], other_seed["labels"])


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path, teacher_dir, english_mlm, monkeypatch):
    run = english_run(tmp_path, teacher_dir)
    real_call = MaskingCollator.__call__
    calls = []

    def interrupt_on_the_12th_batch(self, texts):
        calls.append(len(texts))
        if len(calls) == 12:
            raise KeyboardInterrupt
        return real_call(self, texts)

    # 2 held-out batches, then training batch 10: the loop checkpoints step 9 as it stops
    monkeypatch.setattr(MaskingCollator, "__call__", interrupt_on_the_12th_batch)
    with pytest.raises(KeyboardInterrupt):
        run.execute(["prepare", "pretrain"])
    monkeypatch.undo()
    assert not (run.dir / "mlm").exists()
    assert (run.dir / ".pretrain.partial" / ".train" / "checkpoint").is_dir()
    run.execute(["prepare", "pretrain"])
    resumed = load_file(str(run.dir / "mlm" / "model.safetensors"))
    uninterrupted = load_file(str(english_mlm.dir / "mlm" / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_from_scratch_vocabulary_covers_the_corpus_and_training_texts_only(chinese_run):
    data = chinese_run.data()
    tokenizer = load_tokenizer(chinese_run.dir / "mlm")
    vocab = set(tokenizer.get_vocab())
    corpus_chars = set("".join(ZH_CORPUS + [example.text for example in data.train]))
    assert corpus_chars <= vocab
    held_back = {example.text[-1] for example in data.dev + data.test}  # each row's own character
    assert held_back and not held_back & vocab
    for text in ZH_CORPUS:
        assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    assert stage_metrics(chinese_run)["vocab_size"] == len(tokenizer)


def test_from_scratch_model_has_the_recipe_sizes(chinese_run):
    config = json.loads((chinese_run.dir / "mlm" / "config.json").read_text(encoding="utf-8"))
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (2, 32, 2)
    assert config["intermediate_size"] == 48
    assert config["max_position_embeddings"] >= 24
    assert config["vocab_size"] == stage_metrics(chinese_run)["vocab_size"]


def test_finetune_starts_from_the_pretrained_encoder(chinese_run):
    teacher = chinese_run.dir / "teacher"
    config = json.loads((teacher / "config.json").read_text(encoding="utf-8"))
    assert config["hidden_size"] == 32 and config["vocab_size"] == stage_metrics(chinese_run)["vocab_size"]
    assert sorted(config["label2id"]) == ["neg", "pos"]
    assert (teacher / "vocab.txt").read_text(encoding="utf-8") == (chinese_run.dir / "mlm" / "vocab.txt").read_text(encoding="utf-8")
    # three fine-tuning steps at 2e-5 move the pretrained embeddings by far less than their spread
    pretrained = load_file(str(chinese_run.dir / "mlm" / "model.safetensors"))["embeddings.word_embeddings.weight"]
    tuned = load_file(str(teacher / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]
    assert torch.allclose(tuned, pretrained, atol=1e-3)
    assert pretrained.std() > 0.01


@pytest.mark.parametrize("name", ["roberta", "deberta-v2", "modernbert"])
def test_a_bpe_or_sentencepiece_teacher_is_pretrained_further_and_finetuned_from_it(tmp_path, name):
    """Further pretraining is not BERT's alone: a byte-level BPE (RoBERTa, ModernBERT) or
    SentencePiece (DeBERTa-v3) teacher learns its corpus with whole-word masks, and fine-tuning
    starts from the encoder it saved."""
    teacher_dir = tiny_encoder_dir(tmp_path / "teacher", name)
    english_run(tmp_path, teacher_dir)  # writes en.toml
    recipe = (tmp_path / "en.toml").read_text(encoding="utf-8")
    recipe = recipe.replace("max_steps = 60", "max_steps = 30") + "[stages.finetune]\nmax_steps = 2\nlr = 2e-5\n"
    (tmp_path / "en.toml").write_text(recipe, encoding="utf-8")
    run = Run(load_recipe(tmp_path / "en.toml"))
    run.execute(["prepare", "pretrain", "finetune"])
    metrics = stage_metrics(run)
    assert metrics["steps"] == 30
    assert metrics["held_out_loss"] < metrics["initial_held_out_loss"]
    config = json.loads((run.dir / "teacher" / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == name
    # two fine-tuning steps at 2e-5 move the pretrained embeddings by far less than pretraining did
    pretrained_weights = load_file(str(run.dir / "mlm" / "model.safetensors"))
    key = next(key for key in pretrained_weights if key.endswith(("word_embeddings.weight", "tok_embeddings.weight")))
    pretrained = pretrained_weights[key]
    original = load_file(str(teacher_dir / "model.safetensors"))[key]
    tuned = next(tensor for weight, tensor in load_file(str(run.dir / "teacher" / "model.safetensors")).items()
                 if weight.endswith(key))
    assert torch.allclose(tuned, pretrained, atol=1e-3)
    assert not torch.allclose(pretrained, original, atol=1e-3)
