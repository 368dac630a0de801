"""The four distillation stages (GD, GED, TAD, TSD) on a tiny BERT teacher, through real runs.

The teacher is a random 4-layer BERT classifier with a 100-piece WordPiece vocabulary, saved
with its tokenizer; recipes point `[teacher] model` at it, so no fine-tuning stage is needed.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import load_tool, tiny_rows, write_rows
from tiny_models import tiny_eager_bert
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from distill import provenance
from distill.errors import UserError
from distill.losses import hard_label_loss, relation_loss, soft_label_loss
from distill.models.student import make_student
from distill.models.teacher import load_classifier
from distill.pipeline import Run
from distill.recipe import RelationSettings, load_recipe, parse_recipe
from distill.stages.augmentation import augmented_texts
from distill.stages.common import task_dataset, text_encoder
from distill.stages.distillation import (
    RelationTransfer,
    frozen_teacher,
    teacher_and_student,
)
from distill.report.evaluate import predict_logits
from distill.stages.task import LossWeights, cache_teacher_logits, label_loss_fn
from distill.tasks import family

CLASSIFICATION = family("classification")

LABELS = ["negative", "neutral", "positive"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TASK_WORDS = ["negative", "neutral", "positive", "sentence", "number", "context"]
CORPUS_WORDS = ["film", "good", "bad", "plot"]  # only in the general corpus
DIGITS = [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]
FILLER = [f"filler{i}" for i in range(100 - len(SPECIALS) - len(TASK_WORDS) - len(CORPUS_WORDS) - len(DIGITS))]
VOCAB = SPECIALS + TASK_WORDS + CORPUS_WORDS + DIGITS + FILLER
QUERY_0 = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("teacher")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast.from_pretrained(directory).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, initializer_range=0.5,  # peaked attention: relations far from uniform
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def _detach_run_logs():
    yield
    logger = logging.getLogger("distill")
    for handler in [h for h in logger.handlers if getattr(h, "_distill_run", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True


@pytest.fixture
def make_run(tmp_path, teacher_dir):
    """`make_run(stages, student="")` -> a Run on the tiny CSV (text pairs on) with the given stage tables."""
    write_rows(tmp_path / "tiny.csv", tiny_rows())
    (tmp_path / "corpus.txt").write_text(
        "\n".join(f"{w} {v} plot number {i}" for i, (w, v) in enumerate(zip(CORPUS_WORDS * 5, TASK_WORDS * 4))),
        encoding="utf-8",
    )

    def make(stages: str, student: str = "") -> Run:
        recipe = f"""
[run]
name = "r"
out_dir = "{tmp_path / 'runs'}"
seed = 7
device = "cpu"

[task]
dataset = "tiny.csv"
text_pair_column = "pair"
max_length = 16

[teacher]
model = "{teacher_dir}"

[student]
layers = 2
{student}

{stages}

[export]
enabled = false

[report]
enabled = false
"""
        path = tmp_path / "r.toml"
        path.write_text(recipe, encoding="utf-8")
        return Run(load_recipe(path))

    return make


def stage_table(name: str, **settings) -> str:
    values = {"max_steps": 3, "batch_size": 8, "lr": 1e-3, **settings}
    lines = [f"{key} = {json.dumps(value)}\n" for key, value in values.items() if value is not None]
    return f"[stages.{name}]\n" + "".join(lines)


def saved_metrics(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text(encoding="utf-8"))


def train_logs(run: Run, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [row for row in rows if row.get("stage") == stage and "loss" in row]


def test_a_rerun_stage_starts_from_the_stage_before_it_not_from_its_own_or_a_dropped_output(make_run):
    first = make_run("\n".join([stage_table("general"), stage_table("task_adaptive"), stage_table("task_specific")]))
    first.execute()
    assert saved_metrics(first.dir / "student")["started_from"] == "student_tad"
    # TSD at another rate: rerun, and again from TAD's student, not from its own last output.
    changed = make_run("\n".join([stage_table("general"), stage_table("task_adaptive"), stage_table("task_specific", lr=2e-3)]))
    assert changed.dir == first.dir and list(changed.execute(only=["task_specific"])) == ["task_specific"]
    assert saved_metrics(changed.dir / "student")["started_from"] == "student_tad"
    # TAD dropped from the recipe: its directory stays on disk but is stale; TSD continues from GD.
    dropped = make_run("\n".join([stage_table("general"), stage_table("task_specific", lr=2e-3)]))
    dropped.execute()
    assert (dropped.dir / "student_tad").is_dir()
    assert saved_metrics(dropped.dir / "student")["started_from"] == "student_gd"


def test_chain_gd_ged_tad_tsd_prunes_once_and_each_stage_starts_from_the_last(make_run, teacher_dir):
    stages = "\n".join(
        [
            stage_table("general"),
            stage_table("general_enhanced", corpus=["corpus.txt"]),
            stage_table("task_adaptive", relations=["qk", "vv"]),
            # A learning rate so small that TSD leaves its start point visible in the saved weights.
            stage_table("task_specific", lr=1e-9, baseline_twin=True),
        ]
    )
    run = make_run(stages, student="prune_vocab = true")
    results = run.execute()
    outputs = {"general": "student_gd", "general_enhanced": "student_ged", "task_adaptive": "student_tad"}
    outputs["task_specific"] = "student"

    for stage, output in outputs.items():
        model = load_classifier(run.dir / output)
        assert model.config.num_hidden_layers == 2 and model.config.id2label == dict(enumerate(LABELS))
    metrics = {stage: saved_metrics(run.dir / output) for stage, output in outputs.items()}
    assert [metrics[s]["started_from"] for s in outputs] == [
        "new student (init teacher-layers)", "student_gd", "student_ged", "student_tad",
    ]  # fmt: skip

    # GD (English, no corpus) trains on the task's training texts and says so; GED reads the corpus file.
    assert metrics["general"]["texts_source"] == "no corpus given: the task's 40 training texts, labels unused"
    assert metrics["general"]["texts"] == 40
    corpus = run.dir.parent.parent / "corpus.txt"
    assert metrics["general_enhanced"]["texts_source"] == f"corpus {corpus} (20 texts)"
    from distill.stages.report import (
        text_source_notes,  # what report.json's "notes" says of it
    )

    assert text_source_notes(run) == (
        f"general read no corpus given: the task's 40 training texts, labels unused; "
        f"general_enhanced read corpus {corpus} (20 texts)"
    )

    # Only the first stage prunes, on the training split alone: specials plus the pieces of its texts and pairs.
    teacher_tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    texts = [text for e in run.data().train for text in (e.text, e.text_pair)]
    used = {piece for text in texts for piece in teacher_tokenizer.tokenize(text)}
    gd = results["general"]["metrics"]
    assert gd["vocab_tokens_before"] == 100 and gd["vocab_tokens_kept"] == len(used | set(SPECIALS))
    assert gd["vocab_mb_saved"] == pytest.approx((100 - gd["vocab_tokens_kept"]) * 32 * 4 / 2**20, abs=1e-3)
    later = [key for stage in outputs if stage != "general" for key in results[stage]["metrics"]]
    assert not any(key.startswith("vocab_") for key in later)
    assert load_classifier(run.dir / "student").config.vocab_size == gd["vocab_tokens_kept"]

    # TSD started from TAD's weights, which GD, GED and TAD moved away from the teacher's layer 1.
    tad, tsd = load_classifier(run.dir / "student_tad"), load_classifier(run.dir / "student")
    teacher = load_classifier(teacher_dir)
    assert torch.allclose(tsd.state_dict()[QUERY_0], tad.state_dict()[QUERY_0], atol=1e-7)
    teacher_layer_1 = teacher.state_dict()["bert.encoder.layer.1.attention.self.query.weight"]
    assert (tad.state_dict()[QUERY_0] - teacher_layer_1).abs().max() > 1e-4

    # The twin: same start, same loop and steps, gold labels only.
    twin = run.dir / "student" / "twin"
    assert load_classifier(twin).config.vocab_size == gd["vocab_tokens_kept"]
    assert (twin / "tokenizer.json").is_file()
    twin_metrics = saved_metrics(twin)
    assert twin_metrics["loss_weights"] == {"soft": 0.0, "hard": 1.0, "relation": 0.0}
    assert twin_metrics["steps"] == metrics["task_specific"]["steps"] == 3
    assert 0.0 <= twin_metrics["test"]["accuracy"] <= 1.0
    assert results["task_specific"]["metrics"]["twin_test_accuracy"] == twin_metrics["test"]["accuracy"]
    assert all("soft" in row and "hard" in row for row in train_logs(run, "task_specific"))
    twin_logs = train_logs(run, "task_specific twin")
    assert twin_logs and all("hard" in row and "soft" not in row for row in twin_logs)


def test_task_adaptive_lowers_the_relation_loss(make_run):
    # A random student: one built from teacher layers starts with nearly the teacher's top layer.
    run = make_run(stage_table("task_adaptive", max_steps=40, warmup_ratio=0.0), student='init = "random"')
    metrics = run.execute()["task_adaptive"]["metrics"]
    assert metrics["texts"] == 40 and metrics["steps"] == 40
    assert metrics["dev_relation_loss_before"] > 0.05
    assert metrics["dev_relation_loss_after"] < 0.7 * metrics["dev_relation_loss_before"]
    assert all(row["relation"] > 0 for row in train_logs(run, "task_adaptive"))  # logged under its own name


def test_hidden_weight_adds_the_hidden_term_to_tad_and_alone_makes_tsd_run_its_teacher_live(make_run):
    stages = stage_table("task_adaptive", hidden_weight=2.0) + stage_table(
        "task_specific", soft_weight=0.0, hard_weight=0.0, relation_weight=0.0, hidden_weight=1.0
    )
    run = make_run(stages)
    run.execute()
    assert all(row["hidden"] > 0 and row["relation"] > 0 for row in train_logs(run, "task_adaptive"))
    tsd = train_logs(run, "task_specific")
    assert tsd and all(set(row) >= {"hidden", "loss"} and "relation" not in row for row in tsd)
    assert all(row["loss"] == pytest.approx(row["hidden"], rel=1e-5) for row in tsd)


def test_task_adaptive_adds_the_augmented_texts(make_run):
    augment = 'augment = { unk = 0.2, pos_swap = 0.0, n_sampling = 0.5, multiplier = 2 }'
    run = make_run(stage_table("task_adaptive", augment=True) + f"[stages.data_distill]\nenabled = false\n{augment}\n")
    metrics = run.execute()["task_adaptive"]["metrics"]
    augmented = augmented_texts(run)  # read back from the run's cache
    assert 0 < len(augmented) <= 80 and metrics["texts"] == 40 + len(augmented)
    source = saved_metrics(run.dir / "student_tad")["texts_source"]
    assert source == f"the task's 40 training texts and {len(augmented)} augmented texts"


def test_task_specific_records_the_teacher_cache_saving(make_run):
    run = make_run(stage_table("task_specific", max_steps=None, epochs=3, soft_weight=1.0, hard_weight=1.0))
    metrics = run.execute()["task_specific"]["metrics"]
    assert metrics["teacher_logits_seconds"] > 0
    # 40 rows at batch 8 for 3 epochs: a live teacher would have run 3 passes instead of 1.
    assert metrics["teacher_seconds_saved"] == pytest.approx(2 * metrics["teacher_logits_seconds"], abs=2e-3)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and not (run.dir / "student" / "twin").exists()


@pytest.mark.parametrize("key", ["teacher_layer", "student_layer"])
def test_out_of_range_relation_layers_are_user_errors(make_run, key):
    run = make_run(stage_table("task_adaptive", **{key: 4 if key == "teacher_layer" else -3}))
    with pytest.raises(UserError, match=f"{key} = .* out of range") as info:
        run.execute()
    assert info.value.where == f"[stages.task_adaptive] {key}"
    assert not (run.dir / "student_tad").exists()


def test_minilm_relations_use_the_models_attention_heads():
    # ["qk", "vv"] is MiniLM: its qk term is the KL between the models' real attention maps.
    teacher, student = tiny_eager_bert(0, width=32), tiny_eager_bert(1, width=16)  # 4 attention heads each
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    ids = torch.randint(3, 100, mask.shape, generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": mask}
    where = "[stages.task_adaptive]"
    with RelationTransfer(teacher, student, RelationSettings(), where) as minilm_v2:
        assert minilm_v2.heads == 16  # qq, kk, vv: the largest divisor <= 48 of both widths
    with torch.no_grad(), RelationTransfer(teacher, student, RelationSettings(relations=["qk", "vv"]), where) as minilm:
        assert minilm.heads == 4
        features_T, features_S = minilm.features(student, batch, batch)
        loss = minilm.loss(features_T, features_S)
        p_T = teacher(**batch, output_attentions=True).attentions[-1]  # (batch, heads, seq, seq)
        p_S = student(**batch, output_attentions=True).attentions[-1]
    real_keys = mask.bool()[:, None, None, :]
    rows = torch.where(real_keys, p_T * (p_T.log() - p_S.log()), torch.zeros(())).sum(-1)  # (batch, heads, seq)
    attention_kl = rows[mask.bool()[:, None, :].expand_as(rows)].mean()
    values_kl = relation_loss(features_T, features_S, -1, -1, ["vv"], num_heads=4)
    assert attention_kl > 0.01
    torch.testing.assert_close(loss, attention_kl + values_kl, rtol=1e-4, atol=1e-6)


def test_ensemble_relations_target_the_weighted_mean_of_the_members_attention_maps():
    # relation_targets = "mean": with "qk" the target is the weighted mean of the members' real attention maps.
    members = [tiny_eager_bert(seed, width=32) for seed in (0, 2)]
    student = tiny_eager_bert(1, width=16)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    batch = {"input_ids": torch.randint(3, 100, mask.shape, generator=torch.Generator().manual_seed(0)), "attention_mask": mask}
    qk = RelationSettings(relations=["qk"])
    with torch.no_grad(), RelationTransfer(members[0], student, qk, "[stages.task_adaptive]", [(members[0], 0.75), (members[1], 0.25)]) as transfer:
        features_T, features_S = transfer.features(student, batch, batch)
        loss = transfer.loss(features_T, features_S)
        p_T = 0.75 * members[0](**batch, output_attentions=True).attentions[-1] + 0.25 * members[1](**batch, output_attentions=True).attentions[-1]
        p_S = student(**batch, output_attentions=True).attentions[-1]
    assert len(features_T) == 2
    real_keys = mask.bool()[:, None, None, :]
    rows = torch.where(real_keys, p_T * (p_T.log() - p_S.log()), torch.zeros(())).sum(-1)  # (batch, heads, seq)
    torch.testing.assert_close(loss, rows[mask.bool()[:, None, :].expand_as(rows)].mean(), rtol=1e-4, atol=1e-6)


def test_the_hidden_term_is_the_mse_of_the_layers_outputs_over_real_tokens():
    # TinyBERT's hidden-state loss, beside the relations: teacher layer 0 against the student's last layer.
    teacher, student, other = tiny_eager_bert(0, width=32), tiny_eager_bert(1, width=32), tiny_eager_bert(2, width=32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    batch = {"input_ids": torch.randint(3, 100, mask.shape, generator=torch.Generator().manual_seed(0)), "attention_mask": mask}
    settings = RelationSettings(hidden_weight=0.5, teacher_layer=0)
    with torch.no_grad():
        h_T = teacher(**batch, output_hidden_states=True).hidden_states[1]  # layer 0's output, (batch, seq, 32)
        h_O = other(**batch, output_hidden_states=True).hidden_states[1]
        h_S = student(**batch, output_hidden_states=True).hidden_states[-1]
    real = mask.bool()

    def mse(target):
        return ((h_S - target)[real] ** 2).mean()  # (real tokens, width), flattened

    with torch.no_grad(), RelationTransfer(teacher, student, settings, "[stages.task_adaptive]") as transfer:
        terms = transfer.terms(*transfer.features(student, batch, batch), relation_weight=0.0)
    assert set(terms) == {"hidden"} and terms["hidden"][0] == 0.5  # relations of weight 0 are not computed
    torch.testing.assert_close(terms["hidden"][1], mse(h_T), rtol=1e-5, atol=1e-6)
    members = [(teacher, 0.75), (other, 0.25)]
    with torch.no_grad(), RelationTransfer(teacher, student, settings, "[stages.task_adaptive]", members) as transfer:
        terms = transfer.terms(*transfer.features(student, batch, batch), relation_weight=1.0)
    assert set(terms) == {"relation", "hidden"}
    torch.testing.assert_close(terms["hidden"][1], 0.75 * mse(h_T) + 0.25 * mse(h_O), rtol=1e-5, atol=1e-6)


def test_the_hidden_term_needs_the_teachers_width():
    with pytest.raises(UserError, match="teacher's width is 32 and the student's 16") as info:
        RelationTransfer(tiny_eager_bert(0, width=32), tiny_eager_bert(1, width=16), RelationSettings(hidden_weight=1.0), "[stages.general]")
    assert info.value.where == "[stages.general] hidden_weight"


def test_ensemble_members_that_need_different_relation_heads_are_refused():
    members = [tiny_eager_bert(0, width=32), tiny_eager_bert(2, width=24)]
    with pytest.raises(UserError, match="different relation head counts") as info:
        RelationTransfer(members[0], tiny_eager_bert(1, width=16), RelationSettings(), "[stages.task_adaptive]",
                         [(members[0], 0.5), (members[1], 0.5)])
    assert 'relation_targets = "member"' in info.value.fix


@pytest.mark.parametrize(
    "student_heads, requested, key, fix",
    [(2, None, "relations", "set [student] heads = 4"), (4, 8, "relation_heads", "remove relation_heads")],
)
def test_minilm_relations_need_one_head_count(student_heads, requested, key, fix):
    teacher, student = tiny_eager_bert(0, width=32), tiny_eager_bert(1, width=16, heads=student_heads)
    minilm = RelationSettings(relations=["qk", "vv"], relation_heads=requested)
    with pytest.raises(UserError, match='relations include "qk"') as info:
        RelationTransfer(teacher, student, minilm, "[stages.general]")
    assert info.value.where == f"[stages.general] {key}" and fix in info.value.fix
    assert "\n" not in str(info.value)
    # MiniLMv2 relations split the widths, whatever the attention heads.
    with RelationTransfer(teacher, student, RelationSettings(relation_heads=requested), "[stages.general]") as transfer:
        assert transfer.heads == (requested or 16)


def test_minilm_head_mismatch_stops_the_stage_before_training(make_run):
    run = make_run(stage_table("task_adaptive", relations=["qk", "vv"]), student="heads = 2")
    with pytest.raises(UserError, match="teacher has 4 heads and the student 2") as info:
        run.execute()
    assert info.value.where == "[stages.task_adaptive] relations"
    assert not (run.dir / "student_tad").exists()


def test_all_zero_loss_weights_are_a_user_error(make_run):
    run = make_run(stage_table("task_specific", soft_weight=0.0, hard_weight=0.0))
    with pytest.raises(UserError, match="hidden_weight are all 0"):
        run.execute()


@pytest.fixture
def prepared(make_run, teacher_dir):
    """A run with only `prepare` done, the tiny teacher, and a stage work dir."""

    def prepare(student: str = ""):
        run = make_run("", student)
        run.execute()
        work = run.dir / ".task_specific.partial"
        work.mkdir()
        run.current_stage = "task_specific"
        return run, work, frozen_teacher(load_classifier(teacher_dir), run.device)

    return prepare


def test_pruned_student_gives_the_unpruned_logits_on_the_training_texts(prepared, teacher_dir):
    run, work, teacher = prepared("prune_vocab = true")
    data = run.data()
    pair = teacher_and_student(run, work, teacher, teacher_dir, data)
    assert pair.pruning["vocab_tokens_kept"] < 100 and pair.token_map is not None
    unpruned = make_student(teacher, "teacher-layers", 2, labels=LABELS).eval()
    examples = data.train
    texts_T = task_dataset(pair.teacher_encoder, examples)
    texts_S = task_dataset(text_encoder(run.recipe, work, pair.student.config), examples)
    batch_T = texts_T.collate([texts_T[i] for i in range(len(texts_T))])
    batch_S = texts_S.collate([texts_S[i] for i in range(len(texts_S))])
    assert torch.equal(pair.student_inputs(batch_T["inputs"])["input_ids"], batch_S["inputs"]["input_ids"])
    with torch.no_grad():
        expected = unpruned(**batch_T["inputs"]).logits
        pruned = pair.student.eval()(**batch_S["inputs"]).logits
    assert torch.allclose(pruned, expected, atol=1e-5)
    assert expected.std() > 1e-3  # the logits are not all alike, so the comparison can fail


def test_pruning_never_reads_dev_or_test_texts(prepared, teacher_dir):
    """A piece that only dev and test use is pruned away: those texts meet the student as unseen text."""
    run, work, teacher = prepared("prune_vocab = true")
    for split in ("dev", "test"):  # words of the teacher's vocabulary that no training text uses
        path = run.dir / "data" / f"{split}.jsonl"
        row = {"text": "good film plot", "text_pair": "bad film", "label": "neutral"}
        path.write_text(path.read_text(encoding="utf-8") + json.dumps(row) + "\n", encoding="utf-8")
    data = run.data()
    assert not {w for e in data.train for w in f"{e.text} {e.text_pair}".split()} & set(CORPUS_WORDS)
    teacher_tokenizer = BertTokenizerFast.from_pretrained(teacher_dir)
    teacher_and_student(run, work, teacher, teacher_dir, data)
    student_tokenizer = BertTokenizerFast.from_pretrained(work)
    for e in data.train:  # training texts: the same pieces
        assert student_tokenizer.tokenize(e.text) == teacher_tokenizer.tokenize(e.text)
    assert teacher_tokenizer.tokenize("good film plot") == ["good", "film", "plot"]
    assert student_tokenizer.tokenize("good film plot") == ["[UNK]"] * 3  # unseen: not kept for dev or test
    assert not set(CORPUS_WORDS) & set(student_tokenizer.get_vocab())


def test_cached_teacher_logits_equal_live_ones(prepared, teacher_dir):
    run, _, teacher = prepared()
    dataset = task_dataset(text_encoder(run.recipe, teacher_dir), run.data().train)
    cache = cache_teacher_logits(run, teacher, dataset, run.data())
    rows = [7, 0, 31, 12, 39]  # shuffled, mixed lengths: the cache is in dataset order, not length order
    batch = dataset.collate([dataset[i] for i in rows])
    with torch.no_grad():
        live = teacher(**batch["inputs"]).logits
    assert cache.logits.shape == (40, 3) and cache.seconds > 0
    assert torch.allclose(cache.logits[batch["index"]], live, atol=1e-5)
    assert not torch.allclose(cache.logits[rows[0]], cache.logits[rows[1]])


def test_a_bf16_stage_caches_the_teacher_logits_its_own_autocast_gives(make_run, teacher_dir, monkeypatch):
    import distill.train.loop as loop

    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: True)  # torch emulates bf16 where oneDNN lacks it
    run = make_run('[stages.task_specific]\nprecision = "bf16"')
    run.execute(only=["prepare"])
    teacher = frozen_teacher(load_classifier(teacher_dir), run.device)
    dataset = task_dataset(text_encoder(run.recipe, teacher_dir), run.data().train)
    cache = cache_teacher_logits(run, teacher, dataset, run.data())
    fp32 = predict_logits(teacher, dataset)
    rows = [7, 0, 31, 12, 39]
    batch = dataset.collate([dataset[i] for i in rows])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        live = teacher(**batch["inputs"]).logits.float()
    assert cache.logits.dtype == torch.float32
    # the cache matches a bf16 pass (batched differently, so not bit for bit) and is not the fp32 one
    assert torch.allclose(cache.logits[batch["index"]], live, atol=2e-2)
    assert not torch.allclose(cache.logits, fp32, atol=1e-3)


def test_task_specific_loss_is_the_weighted_sum_of_soft_and_hard_terms(prepared, teacher_dir):
    run, work, teacher = prepared()
    data = run.data()
    pair = teacher_and_student(run, work, teacher, teacher_dir, data)
    dataset = task_dataset(pair.teacher_encoder, data.train, data)
    cache = cache_teacher_logits(run, teacher, dataset, run.data())
    batch = dataset.collate([dataset[i] for i in (3, 18, 25, 36)])
    student = pair.student.eval()
    with torch.no_grad():
        logits_S = student(**batch["inputs"]).logits
        soft_only, logs = label_loss_fn(CLASSIFICATION, LossWeights(1.0, 0.0, 0.0), 2.0, 0.0, pair, cache, None)(student, batch)
        mixed, _ = label_loss_fn(CLASSIFICATION, LossWeights(1.0, 0.5, 0.0), 2.0, 0.0, pair, cache, None)(student, batch)
    soft = soft_label_loss(logits_S, cache.logits[batch["index"]], 2.0)
    hard = hard_label_loss(logits_S, batch["labels"])
    assert soft > 1e-4
    assert soft_only.item() == pytest.approx(soft.item(), rel=1e-6) and set(logs) == {"soft", "loss"}
    assert mixed.item() == pytest.approx(soft.item() + 0.5 * hard.item(), rel=1e-6)


def test_task_specific_rdrop_averages_both_dropout_passes_and_adds_their_symmetric_kl(prepared, teacher_dir):
    run, work, teacher = prepared()
    data = run.data()
    pair = teacher_and_student(run, work, teacher, teacher_dir, data)
    dataset = task_dataset(pair.teacher_encoder, data.train, data)
    cache = cache_teacher_logits(run, teacher, dataset, data)
    batch = dataset.collate([dataset[i] for i in (3, 18, 25, 36)])
    weights = LossWeights(1.0, 0.5, 0.0)
    student = pair.student.eval()
    with torch.no_grad():  # without dropout both passes agree: R-Drop is the plain loss
        plain, _ = label_loss_fn(CLASSIFICATION, weights, 2.0, 0.0, pair, cache, None)(student, batch)
        same, logs = label_loss_fn(CLASSIFICATION, weights, 2.0, 0.0, pair, cache, None, rdrop_alpha=4.0)(student, batch)
    assert same.item() == pytest.approx(plain.item(), rel=1e-5) and logs["rdrop_divergence"] == pytest.approx(0.0, abs=1e-7)
    for module in student.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    student.train()
    with torch.no_grad():
        torch.manual_seed(5)
        loss, logs = label_loss_fn(CLASSIFICATION, weights, 2.0, 0.0, pair, cache, None, rdrop_alpha=4.0)(student, batch)
        torch.manual_seed(5)
        doubled_ids = {key: torch.cat([value, value]) for key, value in batch["inputs"].items()}
        first, second = student(**doubled_ids).logits.chunk(2)
    teacher_logits = cache.logits[batch["index"]]

    def terms(logits: torch.Tensor) -> float:
        return (soft_label_loss(logits, teacher_logits, 2.0) + 0.5 * hard_label_loss(logits, batch["labels"])).item()

    p, q = torch.softmax(first, -1), torch.softmax(second, -1)
    symmetric = 0.5 * ((p * (p.log() - q.log())).sum(-1).mean() + (q * (q.log() - p.log())).sum(-1).mean()).item()
    assert symmetric > 1e-6
    assert logs["rdrop_divergence"] == pytest.approx(symmetric, rel=1e-4)
    assert loss.item() == pytest.approx(0.5 * (terms(first) + terms(second)) + 4.0 * symmetric, rel=1e-5)


def test_ablation_runs_every_variant_on_the_base_split_and_teacher(make_run):
    tables = [stage_table(name) for name in ("general_enhanced", "task_adaptive", "task_specific")]
    base = make_run("\n".join(tables))
    base.execute(only=["prepare"])
    ablate = load_tool("ablate")
    readme = base.dir.parent / "README.md"
    readme.write_text("# results\n", encoding="utf-8")
    arguments = [str(base.recipe.source), "--seeds", "1,2", "--readme", str(readme), "--section", "ablation-r"]
    arguments += ["--set", "run.threads=1"]  # an override every variant takes; the table names it
    result = CliRunner().invoke(ablate.main, arguments)  # the transformer path
    assert result.exit_code == 0, result.output
    folder = base.dir.parent / "r-ablation"
    summary = json.loads((folder / "ablation.json").read_text(encoding="utf-8"))
    names = ["gold_only", "tsd", "tad_tsd", "ged_tad_tsd", "tad_tsd_qk_vv"]
    assert [row["name"] for row in summary["variants"]] == names and summary["seeds"] == [1, 2]
    assert summary["overrides"] == ["run.threads=1"]
    assert summary["provenance"] == provenance.shareable(provenance.record(load_recipe(base.recipe.source, ["run.threads=1"])))
    for row in summary["variants"]:
        assert [run["seed"] for run in row["runs"]] == [1, 2]
        assert row["accuracy_mean"] == pytest.approx(sum(run["accuracy"] for run in row["runs"]) / 2)
        for run in row["runs"]:
            run_dir = Path(run["run_dir"])
            assert (run_dir / "data").resolve() == (base.dir / "data").resolve()
            assert "[prepare] done already, skipped" in (run_dir / "run.log").read_text(encoding="utf-8")
    table = (folder / "ablation.md").read_text(encoding="utf-8").splitlines()
    assert [line.split(" | ")[0] for line in table[4:9]] == [f"| {name}" for name in names] and " ± " in table[4]
    assert "vs_reference" not in summary["variants"][0]
    for row in summary["variants"][1:]:
        versus = row["vs_reference"]
        assert versus["reference"] == "gold_only" and [test["seed"] for test in versus["per_seed"]] == [1, 2]
        diffs = [run["accuracy"] - gold["accuracy"] for run, gold in zip(row["runs"], summary["variants"][0]["runs"])]
        assert [test["diff"] for test in versus["per_seed"]] == pytest.approx(diffs, abs=1e-9)
        assert versus["pooled"]["diff"] == pytest.approx(sum(diffs) / 2, abs=1e-9)
        assert versus["pooled"]["low"] <= versus["pooled"]["diff"] <= versus["pooled"]["high"]
        assert versus["pooled"]["interval"] == "hierarchical bootstrap over seeds and examples"  # two seeds
        assert all(0.0 <= test["p_value"] <= 1.0 for test in versus["per_seed"])
        assert 0.0 <= row["agreement_mean"] <= 1.0
    per_seed_rows = [line for line in table if line.startswith("| tsd | ")]
    assert len(per_seed_rows) == 3  # the summary row and one row per seed
    assert table[0].startswith("Student ablation of `r.toml` with `run.threads=1` (measured ")
    section = readme.read_text(encoding="utf-8").split("<!-- ablation-r:start -->\n")[1].split("\n<!-- ablation-r:end -->")[0]
    assert section == "\n".join(table).strip()  # ablation.md, as written beside ablation.json

    def student(variant: str, seed: int):
        return load_classifier(folder / f"{variant}-seed{seed}" / "student")

    gold_only = saved_metrics(folder / "gold_only-seed1" / "student")
    assert gold_only["loss_weights"] == {"soft": 0.0, "hard": 1.0, "relation": 0.0}
    assert not (folder / "tsd-seed1" / "student_tad").exists()
    assert (folder / "ged_tad_tsd-seed1" / "student_ged").is_dir()
    qk_vv = (folder / "tad_tsd_qk_vv-seed1" / "recipe.toml").read_text(encoding="utf-8")
    assert 'relations = [\n    "qk",\n    "vv",\n]' in qk_vv or 'relations = ["qk", "vv"]' in qk_vv
    # The student seed changes the training order, not the split or the teacher.
    assert not torch.equal(student("tsd", 1).state_dict()[QUERY_0], student("tsd", 2).state_dict()[QUERY_0])


def test_born_again_distils_into_the_teachers_shape_from_its_start_and_is_paired_with_the_teacher(make_run, teacher_dir):
    base = make_run(stage_table("task_specific"))
    base.execute(only=["prepare"])
    folder = load_tool("ablate").ablate(Path(base.recipe.source), [1], ["born_again"])
    rows = {row["name"]: row for row in json.loads((folder / "ablation.json").read_text(encoding="utf-8"))["variants"]}
    assert list(rows) == ["teacher", "born_again"]
    recipe = load_recipe(folder / "born_again-seed1" / "recipe.toml")
    assert (recipe.student.layers, recipe.student.init, recipe.student.seed) == (4, str(teacher_dir), 1)
    student, teacher = load_classifier(folder / "born_again-seed1" / "student"), load_classifier(teacher_dir)
    assert (student.config.num_hidden_layers, student.config.hidden_size) == (4, 32)
    # three steps at lr 1e-3 from the teacher's weights (a fresh init would be ~0.5 away)
    name = "bert.embeddings.position_embeddings.weight"
    assert (student.state_dict()[name] - teacher.state_dict()[name]).abs().max() < 0.01
    assert rows["teacher"]["agreement_mean"] == 1.0
    versus = rows["born_again"]["vs_reference"]
    assert versus["reference"] == "teacher"
    assert versus["per_seed"][0]["diff"] == pytest.approx(rows["born_again"]["accuracy_mean"] - rows["teacher"]["accuracy_mean"], abs=1e-9)


def test_ablation_markdown_names_the_pooled_interval():
    spread = {f"{key}_{stat}": 0.5 for key in ("accuracy", "macro_f1", "agreement") for stat in ("mean", "std")}
    pooled = {"diff": 0.01, "low": -0.002, "high": 0.02, "interval": "hierarchical bootstrap over seeds and examples"}
    per_seed = [{"seed": seed, "diff": 0.01, "low": -0.01, "high": 0.03, "p_value": 0.4} for seed in (1, 2)]
    rows = [
        {"name": "gold_only", "description": "gold", "minutes_mean": 1.0, **spread},
        {
            "name": "tsd", "description": "TSD", "minutes_mean": 1.0, **spread,
            "vs_reference": {"reference": "gold_only", "pooled": {**pooled, "significant": False}, "per_seed": per_seed},
        },
    ]  # fmt: skip
    table = load_tool("ablate").markdown_table(rows, [1, 2], "`r.toml`")
    assert "| tsd | TSD | 0.5000 ± 0.5000 | 0.5000 ± 0.5000 | 0.5000 ± 0.5000 | +1.00 [-0.20, +2.00] vs gold_only" in table
    assert "95% interval from a hierarchical bootstrap over seeds and examples (1,000 resamples)" in table
    assert "MIXED CODE" not in table
    rows[1]["runs"] = [{"run_dir": "runs/a/tsd-seed1", "mixed_code": {"prepare": "d" * 40, "task_specific": "c" * 40}}]
    table = load_tool("ablate").markdown_table(rows, [1, 2], "`r.toml`")
    assert "**⚠ MIXED CODE**: runs/a/tsd-seed1 has stages made by different code (prepare dddddddddddd, task_specific cccccccccccc)." in table


def test_ablation_refuses_a_base_run_made_with_other_settings(make_run):
    base = make_run(stage_table("task_specific"))
    base.execute(only=["prepare"])
    recipe = Path(base.recipe.source)
    edited = recipe.read_text(encoding="utf-8").replace("max_length = 16", "max_length = 20")
    recipe.write_text(edited, encoding="utf-8")
    with pytest.raises(UserError, match="'prepare' stage was made with other settings"):
        load_tool("ablate").ablate(recipe, [1], ["tsd"])
    recipe.write_text(edited.replace("max_length = 20", "max_length = 16"), encoding="utf-8")
    with pytest.raises(UserError, match="'prepare' stage was made with other settings"):  # an override alike
        load_tool("ablate").ablate(recipe, [1], ["tsd"], overrides=("task.max_length=20",))


def test_report_seeds_repeat_the_students_and_pool_the_twin_comparison(make_run, teacher_dir):
    from distill.export.runtime import TRANSFORMER_KIND
    from distill.stages.report import seed_summaries
    from distill.stages.run_models import RunModel, torch_predictions

    run = make_run(stage_table("task_specific", baseline_twin=True))  # [run] seed 7
    run.execute()
    run.recipe.report.seeds = [7, 8]
    test = run.data().test
    teacher = torch_predictions(run, RunModel("teacher", TRANSFORMER_KIND, "teacher", teacher_dir), test)
    summaries = seed_summaries(run, teacher, test)
    repeat = run.dir / "seeds" / "seed8"
    assert (repeat / "data").resolve() == (run.dir / "data").resolve()
    assert "[task_specific] done" in (repeat / "run.log").read_text(encoding="utf-8")
    student, twin = saved_metrics(run.dir / "student"), saved_metrics(run.dir / "student" / "twin")
    student_8, twin_8 = saved_metrics(repeat / "student"), saved_metrics(repeat / "student" / "twin")
    accuracies = [student["test"]["accuracy"], student_8["test"]["accuracy"]]
    entry = summaries["student"]
    assert set(summaries) == {"student"} and entry["seeds"] == [7, 8]
    assert entry["accuracy_mean"] == pytest.approx(sum(accuracies) / 2)
    assert entry["accuracy_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2**0.5)
    diffs = [accuracies[0] - twin["test"]["accuracy"], accuracies[1] - twin_8["test"]["accuracy"]]
    assert [t["diff"] for t in entry["vs_gold_twin"]["per_seed"]] == pytest.approx(diffs, abs=1e-9)
    assert entry["vs_gold_twin"]["pooled"]["diff"] == pytest.approx(sum(diffs) / 2, abs=1e-9)
    assert entry["vs_gold_twin"]["pooled"]["interval"] == "hierarchical bootstrap over seeds and examples"
    # the seed changes the student's training, and a second report reuses the finished repeat
    assert not torch.equal(
        load_classifier(run.dir / "student").state_dict()[QUERY_0], load_classifier(repeat / "student").state_dict()[QUERY_0]
    )
    assert seed_summaries(run, teacher, test) == summaries
    assert "[task_specific] done already, skipped" in (repeat / "run.log").read_text(encoding="utf-8")


def test_report_seeds_must_be_distinct():
    with pytest.raises(UserError, match="repeat a seed"):
        parse_recipe({"report": {"seeds": [1, 2, 1]}}, "r.toml")
