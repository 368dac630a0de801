"""Data distillation: cached augmentation, resumable teacher labelling, targets, the stage."""

from __future__ import annotations

import hashlib
import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from distill.data.augment import Augmenter
from distill.data.datasets import Example, PreparedData, write_split
from distill.data.encoded import EncodedDataset, WordDataset, word_logits
from distill.data.words import WordTokenizer, WordVocab
from distill.errors import UserError
from distill.models.shallow import ShallowConfig, build_shallow, load_shallow
from distill.models.teacher import load_classifier
from distill.models.word_vectors import teacher_embeddings
from distill.pipeline import Run
from distill.recipe import parse_recipe
from distill.report.evaluate import evaluate_model, predict_logits
from distill.stages import augmentation, data_distill
from distill.stages.augmentation import (
    augmented_texts,
    distillation_texts,
    teacher_labels,
    teacher_logits,
)
from distill.stages.common import text_encoder
from distill.stages.data_distill import distillation_loss, training_set
from distill.tasks import family
from distill.tasks.token_classification import IGNORED

CLASSIFICATION = family("classification")

LABELS = ["negative", "neutral", "positive"]
WORDS_BY_LABEL = {
    "negative": ["bad", "awful", "boring"],
    "neutral": ["okay", "long", "new"],
    "positive": ["good", "great", "fun"],
}
TEMPLATES = ["the movie was {}", "a {} film", "{} acting and plot"]
# Short spans of training texts: augmentation makes them unless it filters them out.
DEV = [
    ("good", "positive"),
    ("a bad", "negative"),
    ("movie was okay", "neutral"),
    ("fun", "positive"),
    ("boring film", "negative"),
    ("long", "neutral"),
]
TEST = [
    ("great", "positive"),
    ("awful acting", "negative"),
    ("a new film", "neutral"),
    ("was fun", "positive"),
    ("the movie was bad", "negative"),
    ("okay", "neutral"),
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEMPLATE_WORDS = ["the", "movie", "was", "a", "film", "acting", "and", "plot"]
TEACHER_VOCAB = (
    SPECIAL + TEMPLATE_WORDS + [word for words in WORDS_BY_LABEL.values() for word in words]
)
CHUNK = 16


def train_examples() -> list[Example]:
    return [
        Example(t.format(w), label)
        for label, words in WORDS_BY_LABEL.items()
        for w in words
        for t in TEMPLATES
    ]


def save_tiny_teacher(directory) -> None:
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(TEACHER_VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TEACHER_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        initializer_range=0.2,  # wide enough that texts get clearly different logits
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    BertForSequenceClassification(config).eval().save_pretrained(directory)


@pytest.fixture
def tiny_run(tmp_path):
    """A run directory with prepared data and a fine-tuned (tiny, random) teacher."""
    recipe = parse_recipe(
        {
            "run": {"name": "tiny", "out_dir": str(tmp_path / "runs"), "seed": 3},
            "task": {"max_length": 16},
            "stages": {
                "finetune": {},
                "data_distill": {
                    "students": ["bow", "cnn"],
                    "labels": "soft",
                    "temperature": 2.0,
                    "max_steps": 4,
                    "batch_size": 8,
                    "embed_dim": 8,
                    "hidden": 8,
                    "augment": {"unk": 0.2, "pos_swap": 0.0, "n_sampling": 0.5, "multiplier": 20},
                },
            },
            "export": {"enabled": False},
            "report": {"enabled": False},
        }
    )
    run = Run(recipe)
    data_dir = run.dir / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "labels.json").write_text(json.dumps(LABELS), encoding="utf-8")
    write_split(train_examples(), data_dir / "train.jsonl")
    write_split([Example(*row) for row in DEV], data_dir / "dev.jsonl")
    write_split([Example(*row) for row in TEST], data_dir / "test.jsonl")
    save_tiny_teacher(run.dir / "teacher")
    yield run
    logger = logging.getLogger("distill")
    for handler in [h for h in logger.handlers if getattr(h, "_distill_run", False)]:
        logger.removeHandler(handler)
        handler.close()


def normal_form(text: str) -> str:
    tokenizer = WordTokenizer("en")
    return tokenizer.join(tokenizer.split(text))


def direct_teacher_logits(run, texts) -> np.ndarray:
    teacher_dir = run.dir / "teacher"
    dataset = EncodedDataset(text_encoder(run.recipe, teacher_dir), texts)
    return predict_logits(load_classifier(teacher_dir), dataset).numpy()


# ------------------------------------------------------------------ augmentation


def test_augmented_texts_are_cached_and_leave_out_dev_test_and_training_texts(
    tiny_run, monkeypatch
):
    train = [e.text for e in train_examples()]
    unfiltered = Augmenter(
        "en", unk=0.2, pos_swap=0.0, n_sampling=0.5, multiplier=20, seed=3
    ).augment(train)
    held_out = {normal_form(text) for text, _ in DEV + TEST}
    assert len(held_out & set(unfiltered)) >= 4  # the data would leak without the filter

    texts = augmented_texts(tiny_run)
    assert len(texts) > 100
    assert not held_out & set(texts)
    assert not {normal_form(text) for text in train} & set(texts)
    assert len(set(texts)) == len(texts)

    (cache_file,) = (tiny_run.dir / "cache").glob("augmented-*.jsonl")
    lines = cache_file.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == texts

    def fail(*args, **kwargs):
        raise AssertionError("augmented again instead of reading the cache")

    monkeypatch.setattr(Augmenter, "augment", fail)
    assert augmented_texts(tiny_run) == texts


def test_another_seed_augments_into_another_cache_file(tiny_run):
    first = augmented_texts(tiny_run)
    tiny_run.recipe.run.seed = 4
    second = augmented_texts(tiny_run)
    assert second != first
    assert len(list((tiny_run.dir / "cache").glob("augmented-*.jsonl"))) == 2


# ------------------------------------------------------------------ teacher labels


def logits_on_disk(run) -> dict[str, np.ndarray]:
    """Text key -> logits row, read straight from the chunk files."""
    (labels_dir,) = (run.dir / "cache").glob("labels-*")
    rows = {}
    for path in labels_dir.glob("chunk-*.npz"):
        with np.load(path) as chunk:
            assert len(chunk["keys"]) == len(chunk["logits"]) <= CHUNK
            rows.update(zip(chunk["keys"].tolist(), chunk["logits"]))
    return rows


def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def test_teacher_logits_on_disk_equal_a_direct_teacher_call(tiny_run):
    texts = distillation_texts(tiny_run)
    assert texts[:27] == [e.text for e in train_examples()]
    logits = teacher_logits(tiny_run, texts, chunk_size=CHUNK)

    (labels_dir,) = (tiny_run.dir / "cache").glob("labels-*")
    assert len(list(labels_dir.glob("chunk-*.npz"))) == math.ceil(len(texts) / CHUNK)
    stored = logits_on_disk(tiny_run)
    assert len(stored) == len(texts)
    on_disk = np.stack([stored[text_key(text)] for text in texts])
    direct = direct_teacher_logits(tiny_run, texts)
    assert on_disk.shape == (len(texts), 3)
    assert np.ptp(direct, axis=0).min() > 0.05  # rows differ, so row order matters below
    np.testing.assert_allclose(on_disk, direct, atol=1e-5)
    np.testing.assert_allclose(logits, direct, atol=1e-5)

    probabilities = teacher_labels(tiny_run, texts, chunk_size=CHUNK)
    np.testing.assert_allclose(
        probabilities, torch.softmax(torch.from_numpy(direct), -1).numpy(), atol=1e-6
    )


def counting_predictions(monkeypatch, fail_after: int | None = None) -> list[int]:
    """Make the teacher's batches countable (texts per chunk); optionally die on a later chunk."""
    labelled: list[int] = []

    def counted(model, dataset, *args):
        if fail_after is not None and len(labelled) == fail_after:
            raise KeyboardInterrupt
        labelled.append(len(dataset))
        return predict_logits(model, dataset, *args)  # the real one, imported above

    monkeypatch.setattr(augmentation, "predict_logits", counted)
    return labelled


def test_killed_labelling_resumes_from_its_finished_chunks(tiny_run, monkeypatch):
    texts = distillation_texts(tiny_run)
    expected = direct_teacher_logits(tiny_run, texts)
    counting_predictions(monkeypatch, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        teacher_logits(tiny_run, texts, chunk_size=CHUNK)
    assert len(logits_on_disk(tiny_run)) == 2 * CHUNK  # two finished chunks, no partial file
    (labels_dir,) = (tiny_run.dir / "cache").glob("labels-*")
    assert not list(labels_dir.glob(".*"))

    labelled = counting_predictions(monkeypatch)
    resumed = teacher_logits(tiny_run, texts, chunk_size=CHUNK)
    assert sum(labelled) == len(texts) - 2 * CHUNK  # the two finished chunks were read, not recomputed
    np.testing.assert_allclose(resumed, expected, atol=1e-5)


def test_texts_labelled_once_are_not_labelled_again_in_another_list(tiny_run, monkeypatch):
    texts = distillation_texts(tiny_run)
    first, later = texts[: len(texts) // 2], texts[len(texts) // 3 :][::-1]  # overlapping, reordered
    teacher_logits(tiny_run, first, chunk_size=CHUNK)
    labelled = counting_predictions(monkeypatch)
    logits = teacher_logits(tiny_run, later + later[:3], chunk_size=CHUNK)  # with repeats
    assert sum(labelled) == len(set(later) - set(first))
    np.testing.assert_allclose(logits, direct_teacher_logits(tiny_run, later + later[:3]), atol=1e-5)


def test_label_command_summary_counts_what_it_labelled(tiny_run):
    augment = augmentation.run_augment(tiny_run)
    assert augment["train_texts"] == 27
    assert augment["augmented_texts"] == len(augmented_texts(tiny_run))
    texts = distillation_texts(tiny_run)
    first = augmentation.run_label(tiny_run)
    assert first["texts"] == first["labelled_now"] == len(texts)
    expected = np.bincount(direct_teacher_logits(tiny_run, texts).argmax(axis=1), minlength=3)
    assert first["teacher_label_counts"] == {label: count for label, count in zip(LABELS, expected.tolist()) if count}
    again = augmentation.run_label(tiny_run)
    assert again["labelled_now"] == 0 and again["texts_per_s"] is None
    assert again["teacher_label_counts"] == first["teacher_label_counts"]


def test_teacher_with_labels_in_another_order_is_refused(tiny_run):
    (tiny_run.dir / "data" / "labels.json").write_text(json.dumps(LABELS[::-1]), encoding="utf-8")
    with pytest.raises(UserError, match="not the task's labels"):
        teacher_logits(tiny_run, ["a good film"])


# ------------------------------------------------------------------ targets and loss


def test_hard_and_soft_targets_match_a_hand_computation():
    gold_texts, gold_ids = ["good film", "bad plot", "okay movie"], [2, 0, 1]
    augmented = ["good", "bad film", "movie"]
    logits_T = torch.tensor(
        [
            [0.1, 0.2, 3.0],
            [2.0, 0.0, -1.0],
            [0.0, 1.0, 0.0],
            [-1.0, 0.5, 2.5],
            [1.5, 1.0, -2.0],
            [0.0, 2.0, 1.0],
        ]
    )  # (6 rows, 3 classes): 3 gold rows, then 3 augmented rows
    tokenizer = WordTokenizer("en")
    vocab = WordVocab.build(tokenizer.split(text) for text in gold_texts)
    dataset = training_set(CLASSIFICATION, tokenizer, vocab, gold_texts, gold_ids, augmented, logits_T, max_len=8)
    assert dataset.labels == [2, 0, 1, 2, 0, 1]  # gold, then the teacher's argmax

    batch = dataset.collate([dataset[i] for i in (0, 4, 2, 5)])
    torch.manual_seed(0)
    model = build_shallow(
        ShallowConfig(kind="bow", vocab_size=len(vocab), num_labels=3, embed_dim=4, hidden=4)
    )
    logits_S = model.eval()(**batch["inputs"])  # (4, 3)
    targets = torch.tensor([2, 0, 1, 1])
    ce = -F.log_softmax(logits_S, -1)[torch.arange(4), targets]  # (4,) per-row cross-entropy

    hard, logs = distillation_loss(CLASSIFICATION, logits_S, batch, logits_T, 3, "hard", 2.0)
    assert hard.item() == pytest.approx(ce.mean().item(), rel=1e-6)
    assert set(logs) == {"hard", "loss"}

    tau = 2.0
    p_T = F.softmax(logits_T[[0, 4, 2, 5]] / tau, -1)
    kl = (p_T * (p_T.log() - F.log_softmax(logits_S / tau, -1))).sum(-1) * tau**2  # (4,)
    gold_rows = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = (kl + gold_rows * ce).mean()  # CE on gold only for originals, soft on every row
    soft, logs = distillation_loss(CLASSIFICATION, logits_S, batch, logits_T, 3, "soft", tau)
    assert soft.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["soft"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert logs["hard"] == pytest.approx(ce[[0, 2]].mean().item(), rel=1e-5)

    only_augmented = dataset.collate([dataset[i] for i in (3, 5)])
    soft, logs = distillation_loss(
        CLASSIFICATION, model(**only_augmented["inputs"]), only_augmented, logits_T, 3, "soft", tau
    )
    assert torch.isfinite(soft) and set(logs) == {"soft", "loss"}


def test_per_token_targets_and_losses_match_a_hand_computation():
    """Token classification: one word per token, the teacher's tag per word of an augmented row
    (none past its last word with logits, none past max_len), and both losses per word."""
    ner = family("token_classification")
    nan = float("nan")
    gold_words, gold_tags = [("Ann", "saw", "Paris")], [[1, 0, 3]]
    augmented = [("Paris", "saw"), ("a", "b", "c")]
    logits_T = torch.tensor(
        [
            [[0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 1.5]],
            [[0.0, 0.0, 0.0, 3.0], [2.0, 1.0, 0.0, 0.0], [nan] * 4],  # NaN past its end
            [[0.5, 0.0, 0.0, 0.0], [nan] * 4, [0.0, 1.0, 0.0, 0.0]],  # "b" has no piece
        ]
    )  # (3 rows, 3 words, 4 tags): the gold row, then the augmented ones
    tokenizer = WordTokenizer("en")
    words = gold_words + augmented
    vocab = WordVocab.build(tokenizer.normalise(row) for row in words)
    texts = [" ".join(row) for row in words]
    dataset = training_set(ner, tokenizer, vocab, texts[:1], gold_tags, texts[1:], logits_T, max_len=2, words=words)
    assert dataset.labels == [[1, 0, IGNORED], [3, 0], [0, IGNORED, IGNORED]]  # max_len 2 cuts the third word
    assert dataset.ids[0] == [vocab.token_to_id["ann"], vocab.token_to_id["saw"]]
    batch = dataset.collate([dataset[i] for i in range(3)])
    assert batch["words"].tolist() == [[0, 1, -1], [0, 1, -1], [0, 1, -1]]

    torch.manual_seed(0)
    model = build_shallow(
        ShallowConfig(kind="cnn", vocab_size=len(vocab), num_labels=4, embed_dim=4, channels=3, head="token")
    ).eval()
    logits_S = word_logits(model(**batch["inputs"]), batch)  # (3, 3, 4)
    log_p_S = F.log_softmax(logits_S, -1)
    tau = 2.0
    hard, _ = distillation_loss(ner, logits_S, batch, logits_T, 1, "hard", tau)
    words_with_targets = [(0, 0, 1), (0, 1, 0), (1, 0, 3), (1, 1, 0), (2, 0, 0)]  # (row, word, tag)
    expected_hard = -sum(log_p_S[r, w, t] for r, w, t in words_with_targets) / 5
    assert hard.item() == pytest.approx(expected_hard.item(), rel=1e-5)

    # soft: KL at tau on each word the teacher has logits for (7 of 9), over the words; the gold
    # row's CE (its two tagged words) weighted by its share of the batch's rows
    seen = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 2)]
    kl = [
        (F.softmax(logits_T[r, w] / tau, -1) * (F.log_softmax(logits_T[r, w] / tau, -1) - F.log_softmax(logits_S[r, w] / tau, -1))).sum() * tau**2
        for r, w in seen
    ]
    gold_ce = -(log_p_S[0, 0, 1] + log_p_S[0, 1, 0]) / 2
    soft, logs = distillation_loss(ner, logits_S, batch, logits_T, 1, "soft", tau)
    assert logs["soft"] == pytest.approx(sum(kl).item() / 7, rel=1e-5)
    assert soft.item() == pytest.approx(sum(kl).item() / 7 + gold_ce.item() / 3, rel=1e-5)


# ------------------------------------------------------------------ the stage


def test_stage_trains_saves_and_reports_bow_and_cnn_students(tiny_run):
    results = tiny_run.execute(only=["data_distill"])
    headline = results["data_distill"]["metrics"]
    augmented = augmented_texts(tiny_run)
    assert headline["augmented_texts"] == len(augmented)
    tokenizer = WordTokenizer("en")
    for kind in ("bow", "cnn"):
        folder = tiny_run.dir / "shallow" / kind
        model, config, vocab = load_shallow(folder)
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        assert config.kind == kind and config.id2label == dict(enumerate(LABELS))
        assert metrics["train_rows"] == {"gold": 27, "augmented": len(augmented)}
        assert metrics["steps"] == 4 and metrics["params"] == sum(
            p.numel() for p in model.parameters()
        )
        test_ids = [LABELS.index(label) for _, label in TEST]
        test_set = WordDataset(tokenizer, vocab, [text for text, _ in TEST], test_ids)
        test_examples = [Example(text, label) for text, label in TEST]
        reloaded = evaluate_model(model, test_set, test_examples, PreparedData(LABELS, [], [], test_examples))
        assert (
            reloaded["accuracy"] == metrics["test"]["accuracy"] == headline[f"{kind}_test_accuracy"]
        )
        assert reloaded["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    assert set(headline) == {"augmented_texts", "bow_test_accuracy", "cnn_test_accuracy"}
    assert not list((tiny_run.dir / "shallow").glob(".*"))  # no checkpoints published


def test_stage_refuses_text_pairs(tiny_run, tmp_path):
    write_split([Example("good film", "positive", "a pair")], tiny_run.dir / "data" / "train.jsonl")
    with pytest.raises(UserError, match="text pairs"):
        data_distill.run(tiny_run, tmp_path)


def test_gold_labels_train_on_the_gold_set_alone_without_the_teacher(tiny_run, monkeypatch):
    def no_teacher(*args, **kwargs):
        raise AssertionError("labels = 'gold' must not augment or call the teacher")

    monkeypatch.setattr(data_distill, "augmented_examples", no_teacher)
    monkeypatch.setattr(data_distill, "teacher_logits", no_teacher)
    section = tiny_run.recipe.stages.data_distill
    tiny_run.recipe.stages.data_distill = section.model_copy(update={"labels": "gold"})
    results = tiny_run.execute(only=["data_distill"])
    assert results["data_distill"]["metrics"]["augmented_texts"] == 0
    for kind in ("bow", "cnn"):
        metrics = json.loads((tiny_run.dir / "shallow" / kind / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["train_rows"] == {"gold": 27, "augmented": 0} and metrics["labels"] == "gold"


def test_ablation_compares_hard_and_soft_data_distillation_with_gold_only_students(tiny_run):
    import shutil
    from pathlib import Path

    import tomli_w
    from conftest import load_tool

    from distill.seeds import shared_hashes

    ablate = load_tool("ablate")
    recipe_path = tiny_run.dir.parent / "tiny.toml"
    recipe_path.write_text(tomli_w.dumps(tiny_run.recipe.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    # the base run's shared stages (data written by the fixture, the tiny teacher) marked done
    data_soft = next(v for v in ablate.VARIANTS if v.name == "data_soft")
    variant = ablate.variant_recipe(tiny_run, data_soft, 1, tiny_run.dir.parent)
    (tiny_run.dir / "done").mkdir(exist_ok=True)
    for name, config_hash in shared_hashes(variant).items():
        marker = {"config_hash": config_hash, "metrics": {}, "seconds": 0.0}
        (tiny_run.dir / "done" / f"{name}.json").write_text(json.dumps(marker), encoding="utf-8")

    folder = ablate.ablate(recipe_path, [1, 2], ["data_gold", "data_hard", "data_soft"])
    summary = json.loads((folder / "ablation.json").read_text(encoding="utf-8"))
    rows = {row["name"]: row for row in summary["variants"]}
    assert list(rows) == [f"{v}/{k}" for v in ("data_gold", "data_hard", "data_soft") for k in ("bow", "cnn")]
    augmented = len(augmented_texts(tiny_run))
    for name, row in rows.items():
        variant_name, kind = name.split("/")
        for seed_run in row["runs"]:
            metrics = json.loads((Path(seed_run["run_dir"]) / "shallow" / kind / "metrics.json").read_text("utf-8"))
            assert metrics["labels"] == variant_name.removeprefix("data_")
            assert metrics["train_rows"]["augmented"] == (0 if variant_name == "data_gold" else augmented)
            assert metrics["test"]["accuracy"] == seed_run["accuracy"]
        if variant_name == "data_gold":
            assert "vs_reference" not in row
        else:
            assert row["vs_reference"]["reference"] == f"data_gold/{kind}"
            gold_runs = rows[f"data_gold/{kind}"]["runs"]
            diffs = [run["accuracy"] - gold["accuracy"] for run, gold in zip(row["runs"], gold_runs)]
            assert [t["diff"] for t in row["vs_reference"]["per_seed"]] == pytest.approx(diffs, abs=1e-9)
    # the student seed changes a word-level student's initial weights and training order
    first, _, _ = load_shallow(folder / "data_soft-seed1" / "shallow" / "bow")
    second, _, _ = load_shallow(folder / "data_soft-seed2" / "shallow" / "bow")
    assert not torch.equal(first.state_dict()["embeddings.weight"], second.state_dict()["embeddings.weight"])
    table = (folder / "ablation.md").read_text(encoding="utf-8")
    assert "| data_soft/cnn | data_gold/cnn | 2 |" in table
    shutil.rmtree(folder)


def test_ablation_takes_the_base_runs_own_word_level_students_for_the_variant_they_are(tiny_run):
    import tomli_w
    from conftest import load_tool

    from distill.seeds import shared_hashes

    ablate = load_tool("ablate")
    recipe_path = tiny_run.dir.parent / "tiny.toml"
    recipe_path.write_text(tomli_w.dumps(tiny_run.recipe.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    for name, config_hash in shared_hashes(tiny_run.recipe).items():
        marker = {"config_hash": config_hash, "metrics": {}, "seconds": 0.0}
        (tiny_run.dir / "done").mkdir(exist_ok=True)
        (tiny_run.dir / "done" / f"{name}.json").write_text(json.dumps(marker), encoding="utf-8")
    tiny_run.execute(only=["data_distill"])  # the recipe's own data distillation: soft labels, [run] seed 3
    with pytest.raises(UserError, match="are not data_hard at seed 3") as info:
        ablate.ablate(recipe_path, [3], ["data_hard"], base_as="data_hard")
    assert info.value.where == "--base-as"
    folder = ablate.ablate(recipe_path, [3], ["data_gold", "data_soft"], base_as="data_soft")
    rows = {row["name"]: row for row in json.loads((folder / "ablation.json").read_text(encoding="utf-8"))["variants"]}
    assert list(rows) == ["data_gold/bow", "data_gold/cnn", "data_soft/bow", "data_soft/cnn"]
    for kind in ("bow", "cnn"):
        [soft] = rows[f"data_soft/{kind}"]["runs"]
        assert soft["run_dir"] == str(tiny_run.dir)  # not trained again
        saved = json.loads((tiny_run.dir / "shallow" / kind / "metrics.json").read_text(encoding="utf-8"))
        assert soft["accuracy"] == saved["test"]["accuracy"]
        assert rows[f"data_soft/{kind}"]["vs_reference"]["reference"] == f"data_gold/{kind}"
    assert not (folder / "data_soft-seed3").exists() and (folder / "data_gold-seed3" / "shallow").is_dir()


@pytest.mark.parametrize("embeddings", ["teacher", "random"])
def test_students_start_from_the_teachers_word_vectors_or_from_random_ones(tiny_run, monkeypatch, embeddings):
    section = tiny_run.recipe.stages.data_distill
    tiny_run.recipe.stages.data_distill = section.model_copy(update={"embeddings": embeddings})
    starts = {}
    real_train = data_distill.train

    def recording_train(model, *args, **kwargs):
        starts[type(model).__name__] = model.embeddings.weight.detach().clone()
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(data_distill, "train", recording_train)
    tiny_run.execute(only=["data_distill"])
    _, _, vocab = load_shallow(tiny_run.dir / "shallow" / "bow")
    teacher = load_classifier(tiny_run.dir / "teacher")
    expected = teacher_embeddings(teacher, text_encoder(tiny_run.recipe, tiny_run.dir / "teacher"), vocab, 8)
    assert set(starts) == {"BOWClassifier", "CNNClassifier"}
    for start in starts.values():
        assert start.shape == expected.shape
        assert torch.allclose(start, expected, atol=1e-5) == (embeddings == "teacher")


def test_a_variant_adds_augment_keys_and_keeps_the_recipe_s_others(tiny_run):
    from distill.seeds import seeded_recipe

    typos = {"augmenter": "keyboard", "rate": 0.1, "copies": 1}
    stages = {"data_distill": {"labels": "soft", "augment": {"nlpaug": [typos]}}}
    recipe = seeded_recipe(tiny_run.recipe, 1, tiny_run.dir.parent, "typos-seed1", stages)
    augment = recipe.stages.data_distill.augment
    assert (augment.unk, augment.n_sampling, augment.multiplier) == (0.2, 0.5, 20)  # the tiny recipe's, not defaults
    assert [(entry.augmenter, entry.rate, entry.copies) for entry in augment.nlpaug] == [("keyboard", 0.1, 1)]
    assert recipe.stages.data_distill.max_steps == 4 and recipe.stages.data_distill.enabled
