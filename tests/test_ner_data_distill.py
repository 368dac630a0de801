"""Data distillation for token classification (NER): tag-preserving augmentation, per-token
teacher labels, CNN and BiGRU taggers, and their ONNX export, predictor and server.

The augmentation properties are checked on many random tagged sentences against rules written
here (tags aligned and valid, entities whole, O words from the training O words); the tiny NER
run of test_ner_e2e goes through fine-tuning, data distillation into both taggers and export,
and its figures are recomputed independently (seqeval's F1, the Hugging Face tokenizer's word
ids, a hand-made forward pass).
"""

from __future__ import annotations

import itertools
import json
import math
import random

import jieba.posseg
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from seqeval.metrics import f1_score as seqeval_f1
from test_ner_e2e import write_recipe
from transformers import AutoTokenizer

from distill.data.augment import Augmenter
from distill.data.datasets import Example
from distill.data.tag_augment import cut_points, word_units
from distill.data.words import WordTokenizer, WordVocab
from distill.errors import UserError
from distill.export.onnx import check_parity, export_shallow
from distill.export.runtime import OnnxPredictor
from distill.export.serve import create_app
from distill.models.shallow import ShallowConfig, build_shallow, load_shallow
from distill.models.teacher import load_classifier
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.stages.augmentation import augmented_examples, teacher_logits
from distill.stages.run_models import RunModel, torch_predictions
from distill.tasks.tags import check_tags, entity_spans, span_tags
from distill.tasks.token_classification import split_tokens
from distill.validate import check_recipe

UNK = "[UNK]"
O_WORDS = ["the", "a", "was", "in", "and", "very", "big", "saw", "today", "quickly", ","]
# No mention is a prefix of another of its type, so a cut entity can never pass for a whole one;
# the PER mentions have distinct lengths, so a replaced PER mention shows in its length.
MENTIONS = {
    "PER": [("Ann",), ("Bob", "Lee"), ("Carl", "J", "Smith")],
    "LOC": [("Paris",), ("New", "York"), ("Rio", "de", "Janeiro")],
    "ORG": [("Acme",), ("United", "Nations")],
}


def hand_tags(kind: str, length: int, scheme: str) -> list[str]:
    """An entity's tags written out: B- I-... in BIO; S-, or B- I-... E- in BIOES."""
    if scheme == "BIOES" and length == 1:
        return [f"S-{kind}"]
    inside = [f"I-{kind}"] * (length - 1)
    return [f"B-{kind}"] + (inside[:-1] + [f"E-{kind}"] if scheme == "BIOES" else inside)


def random_sentences(count: int, scheme: str, seed: int, items: tuple[int, int] = (1, 12)) -> list[tuple[tuple, tuple]]:
    """Sentences of O words and entity mentions (3 in 10 items; adjacent entities of one type occur)."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        tokens: list[str] = []
        tags: list[str] = []
        for _ in range(rng.randint(*items)):
            if rng.random() < 0.3:
                kind = rng.choice(sorted(MENTIONS))
                mention = rng.choice(MENTIONS[kind])
                tokens += mention
                tags += hand_tags(kind, len(mention), scheme)
            else:
                tokens.append(rng.choice(O_WORDS))
                tags.append("O")
        sentences.append((tuple(tokens), tuple(tags)))
    return sentences


def same_mention(output: tuple[str, ...], mention: tuple[str, ...]) -> bool:
    """Equal tokens, a token UNK noise replaced counting as equal."""
    return len(output) == len(mention) and all(a in (b, UNK) for a, b in zip(output, mention))


def entities(sentence, scheme) -> list[tuple[str, tuple[str, ...]]]:
    tokens, tags = sentence
    return [(kind, tuple(tokens[start:end])) for start, end, kind in entity_spans(tags, scheme)]


def test_span_tags_by_hand():
    assert span_tags("PER", 1, "BIO") == ["B-PER"]
    assert span_tags("PER", 3, "BIO") == ["B-PER", "I-PER", "I-PER"]
    assert span_tags("LOC", 1, "BIOES") == ["S-LOC"]
    assert span_tags("LOC", 2, "BIOES") == ["B-LOC", "E-LOC"]
    assert span_tags("LOC", 4, "BIOES") == ["B-LOC", "I-LOC", "I-LOC", "E-LOC"]
    with pytest.raises(ValueError):
        span_tags("LOC", 0, "BIO")


def test_cut_points_fall_outside_entities():
    tags = ["O", "B-PER", "I-PER", "I-PER", "B-LOC", "O"]
    #       |0   |1       2       3       |4       |5   |6
    assert cut_points(tags, "BIO") == [True, True, False, False, True, True, True]
    assert cut_points(["S-LOC", "B-PER", "E-PER"], "BIOES") == [True, True, False, True]


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
@pytest.mark.parametrize("entity_replace", [0.0, 0.5])
def test_every_augmented_sentence_keeps_tags_aligned_valid_and_entities_whole(scheme, entity_replace):
    train = random_sentences(150, scheme, seed=7)
    pool = {(kind, mention) for sentence in train for kind, mention in entities(sentence, scheme)}
    augmenter = Augmenter("en", unk=0.2, pos_swap=0.3, n_sampling=0.5, multiplier=6, seed=1, entity_replace=entity_replace)
    augmenter.fit_tagged(train, scheme)
    made = replaced = swapped = cut = 0
    for source in train:
        source_entities = entities(source, scheme)
        for tokens, tags in augmenter.augment_tagged([source]):
            made += 1
            assert len(tokens) == len(tags) > 0
            check_tags(tags, scheme)  # valid, strictly: no entity starts with I- or ends without E-
            out = entities((tokens, tags), scheme)
            # entity types in order: a contiguous run of the source's (n-sampling cuts only between entities)
            kinds, source_kinds = [k for k, _ in out], [k for k, _ in source_entities]
            assert any(source_kinds[i : i + len(kinds)] == kinds for i in range(len(source_kinds) - len(kinds) + 1))
            for kind, mention in out:
                from_source = any(k == kind and same_mention(mention, m) for k, m in source_entities)
                from_pool = any(k == kind and same_mention(mention, m) for k, m in pool)
                assert from_source or (entity_replace and from_pool), (source, tokens, tags)
                replaced += not from_source
            outside = {token for token, tag in zip(tokens, tags) if tag == "O"}
            assert outside <= set(O_WORDS) | {UNK}  # swaps draw training words outside entities
            swapped += bool(outside - set(source[0]) - {UNK})
            cut += len(tokens) < len(source[0]) and len(out) < len(source_entities)
    assert made > 500 and swapped > 50 and cut > 50  # every operation was at work
    assert (replaced > 0) == bool(entity_replace)


def numbered(sentences):
    """Each sentence's tokens suffixed with its row number (`word#row`): every copy names its source."""
    return [(tuple(f"{token}#{row}" for token in tokens), tags) for row, (tokens, tags) in enumerate(sentences)]


def source_of(tokens, train):
    """The training sentence a copy was made from (by a token that UNK noise left), or None."""
    kept = [token for token in tokens if token != UNK]
    return train[int(kept[0].split("#")[1])] if kept else None


def test_unk_noise_rate_and_tags_kept():
    train = numbered(random_sentences(200, "BIO", seed=3, items=(30, 30)))
    augmenter = Augmenter("en", unk=0.2, pos_swap=0.0, n_sampling=0.0, multiplier=10, seed=0).fit_tagged(train, "BIO")
    made = augmenter.augment_tagged(train)
    tokens = [token for sentence, _ in made for token in sentence]
    # a copy is dropped only when no token changed (0.8 ** 30 of them): the share of [UNK] is unk
    assert len(made) >= 0.99 * 10 * len(train)
    rate = sum(token == UNK for token in tokens) / len(tokens)
    assert abs(rate - 0.2) <= 4.5 * math.sqrt(0.2 * 0.8 / len(tokens))
    for copy, tags in made:  # its source's very tags, and its tokens or [UNK] in their places
        source_tokens, source_tags = source_of(copy, train)
        assert tags == source_tags and all(a in (b, UNK) for a, b in zip(copy, source_tokens, strict=True))


def test_n_sampling_rate_and_cuts_outside_entities():
    train = numbered(random_sentences(200, "BIOES", seed=5, items=(24, 24)))
    augmenter = Augmenter("en", unk=0.0, pos_swap=0.0, n_sampling=0.3, n_sampling_span=[1, 5], multiplier=10, seed=2)
    made = augmenter.fit_tagged(train, "BIOES").augment_tagged(train)
    # an uncut copy equals its source and is dropped, so every copy kept is a cut one (bar the
    # rare window drawn twice for one source)
    rate = len(made) / (10 * len(train))
    assert abs(rate - 0.3) <= 4.5 * math.sqrt(0.3 * 0.7 / (10 * len(train)))
    for tokens, tags in made:
        source_tokens, source_tags = source_of(tokens, train)
        size = len(tokens)
        cuts = cut_points(source_tags, "BIOES")
        # a window of the source (words repeat, so any place it fits) whose edges split no entity
        starts = [i for i in range(len(source_tokens)) if source_tokens[i : i + size] == tokens and source_tags[i : i + size] == tags]
        assert 1 <= size <= 5 and any(cuts[i] and cuts[i + size] for i in starts)
        check_tags(tags, "BIOES")


def test_mention_replacement_rate_and_bioes_tags_for_the_new_length():
    mentions = MENTIONS["PER"]
    # 20 words, a mention, 10 words: long enough that UNK noise makes every copy distinct
    train = [
        (("the",) * 20 + mention + ("was",) * 10, ("O",) * 20 + tuple(hand_tags("PER", len(mention), "BIOES")) + ("O",) * 10)
        for mention in mentions
    ]
    augmenter = Augmenter("en", unk=0.3, pos_swap=0.0, n_sampling=0.0, multiplier=400, seed=4, entity_replace=0.4)
    augmenter.fit_tagged(train, "BIOES")
    replaced = total = 0
    for source in train:
        (_, original), = entities(source, "BIOES")
        for tokens, tags in augmenter.augment_tagged([source]):
            (kind, mention), = entities((tokens, tags), "BIOES")
            start = 20
            assert kind == "PER" and list(tags[start : start + len(mention)]) == hand_tags("PER", len(mention), "BIOES")
            assert any(same_mention(mention, m) for m in mentions)
            replaced += len(mention) != len(original)
            total += 1
    assert abs(replaced / total - 0.4) <= 4.5 * math.sqrt(0.4 * 0.6 / total)


PRONOUNS, VERBS, NOUNS, PLACES = ["我", "他"], ["喜欢", "讨厌", "购买"], ["苹果", "电脑", "衣服"], ["北京", "上海"]


def test_chinese_pos_swap_changes_whole_jieba_words_outside_entities_only():
    """Character tokens: a word is swapped whole for another of its jieba tag (these groups have
    one length, so positions line up), and entity characters never change."""
    train = []
    for pronoun, verb, place, noun in itertools.product(PRONOUNS, VERBS, PLACES, NOUNS):
        tokens = tuple(pronoun + verb + place + "的" + noun)
        tags = ("O",) * (len(pronoun) + len(verb)) + ("B-LOC", "I-LOC") + ("O",) * (1 + len(noun))
        train.append((tokens, tags))
    units = [(0, 1), (1, 3), (3, 5), (5, 6), (6, 8)]  # e.g. 我/喜欢/北京/的/苹果: pronoun, verb, place, 的, noun
    assert all(word_units(tokens, "zh") == units for tokens, _ in train)
    augmenter = Augmenter("zh", unk=0.0, pos_swap=1.0, n_sampling=0.0, multiplier=3, seed=0).fit_tagged(train, "BIO")
    made = 0
    for source in train:
        for tokens, tags in augmenter.augment_tagged([source]):
            made += 1
            assert tags == source[1] and tokens[3:5] == source[0][3:5]  # the place and its tags untouched
            for start, end in units[:2] + units[4:]:  # 的 is alone in its tag: never swapped
                before, after = "".join(source[0][start:end]), "".join(tokens[start:end])
                assert after != before and jieba_tag(after) == jieba_tag(before)
            assert tokens[5] == "的"
    assert made > len(train)


def jieba_tag(word: str) -> str:
    """jieba's dictionary tag of a word, as POS swap reads it."""
    return jieba.posseg.lcut(word, HMM=False)[0].flag


def test_tagged_augmentation_is_seeded_and_never_repeats_training_or_held_out_sentences():
    train = random_sentences(60, "BIO", seed=11)
    held_out = [tokens[:3] for tokens, _ in train[:30] if len(tokens) > 3]  # windows n-sampling can make
    augmenter = Augmenter("en", unk=0.1, pos_swap=0.0, n_sampling=0.9, multiplier=8, seed=9).fit_tagged(train, "BIO")
    unfiltered = augmenter.augment_tagged(train)
    filtered = augmenter.augment_tagged(train, exclude=held_out)
    assert filtered == [row for row in unfiltered if row[0] not in set(held_out)] != unfiltered
    keys = [tuple(token.lower() for token in tokens) for tokens, _ in filtered]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & {tuple(t.lower() for t in tokens) for tokens, _ in train}
    assert Augmenter("en", unk=0.1, pos_swap=0.0, n_sampling=0.9, multiplier=8, seed=9).fit_tagged(train, "BIO").augment_tagged(
        train, exclude=held_out
    ) == filtered


def test_character_noise_and_entity_replacement_are_refused_where_they_do_not_fit():
    from distill.data.noise import CharNoise

    with pytest.raises(UserError, match="rewrites text across token edges"):
        Augmenter("en", pos_swap=0.0, char_noise=[CharNoise("keyboard", rate=0.1)]).fit_tagged([(("a",), ("O",))], "BIO").augment_tagged([])
    with pytest.raises(UserError, match="plain texts have none"):
        Augmenter("en", pos_swap=0.0, entity_replace=0.2).fit(["a text"]).augment(["a text"])


# --------------------------------------------------------------------------- shallow taggers and ONNX

SENTENCES = [["the", "film", "was", "good"], ["a", "plot"], ["Awful", "book", ",", "not", "great", "at", "all", "!"], ["zzz"]]


@pytest.mark.parametrize("kind", ["cnn", "bigru"])
def test_shallow_tagger_onnx_parity_per_token(kind, tmp_path):
    vocab = WordVocab.build(WordTokenizer("en").normalise(sentence) for sentence in SENTENCES[:-1])
    labels = ["O", "B-ART", "I-ART"]
    config = ShallowConfig(kind=kind, vocab_size=len(vocab), num_labels=3, embed_dim=8, hidden=8, channels=4,
                           kernel_sizes=(2, 3), max_len=6, id2label=dict(enumerate(labels)), head="token")
    torch.manual_seed(0)
    model = build_shallow(config).eval()
    texts = [" ".join(sentence) for sentence in SENTENCES]
    exported = export_shallow(model, config, vocab, tmp_path, kind, texts, task="token_classification",
                              words=SENTENCES, task_fields={"token_split": "words"})
    manifest = json.loads(exported.manifest_path.read_text(encoding="utf-8"))
    assert manifest["token_split"] == "words" and manifest["parity_max_abs_diff"] <= 1e-4
    predictor = OnnxPredictor(exported.manifest_path)
    logits, seen = predictor.predict_word_logits(SENTENCES)
    # by hand: lowercased words looked up, one output per word; words past max_len (6) come from the
    # next window, which starts max_len // 4 = 1 word before them
    def by_hand(words: list[str]) -> np.ndarray:
        ids = torch.tensor([[vocab.token_to_id.get(word.lower(), 1) for word in words]])
        with torch.no_grad():
            return model(ids)[0].numpy()  # (words, tags)

    for row, sentence in enumerate(SENTENCES):
        np.testing.assert_allclose(logits[row, : min(6, len(sentence))], by_hand(sentence[:6]), atol=1e-5)
        if len(sentence) > 6:
            np.testing.assert_allclose(logits[row, 6 : len(sentence)], by_hand(sentence[5:11])[1:], atol=1e-5)
        assert seen[row].tolist() == [True] * len(sentence) + [False] * (logits.shape[1] - len(sentence))
    assert max(map(len, SENTENCES)) in range(7, 12)  # one sentence needs a second window, not a third
    other = build_shallow(config).eval()
    assert check_parity(other, exported.manifest_path, texts, words=SENTENCES).max_abs_diff > 1e-3
    results = predictor.predict(["the  film, was good"])
    assert results[0]["tokens"] == ["the", "film", ",", "was", "good"] and len(results[0]["tags"]) == 5


def test_a_chinese_tagger_reads_characters_and_answers_character_offsets(tmp_path):
    sentences = [list("北京是很大的城市"), list("上海人民")]
    vocab = WordVocab.build(sentences)
    labels = ["O", "B-LOC", "I-LOC"]
    config = ShallowConfig(kind="cnn", vocab_size=len(vocab), num_labels=3, embed_dim=8, channels=4, max_len=16,
                           language="zh", id2label=dict(enumerate(labels)), head="token")
    torch.manual_seed(0)
    model = build_shallow(config).eval()
    with torch.no_grad():
        model.classifier.bias[0] = -5.0  # O held down: every character opens or continues an entity
    texts = ["".join(sentence) for sentence in sentences]
    exported = export_shallow(model, config, vocab, tmp_path, "zh", texts, task="token_classification",
                              words=sentences, task_fields={"token_split": "chars"})
    text = " 北京 是很大的城市。"
    (result,) = OnnxPredictor(exported.manifest_path).predict([text])
    assert result["tokens"] == list("北京是很大的城市。") and len(result["tags"]) == 9
    assert result["entities"]
    for entity in result["entities"]:
        assert entity["text"] == text[entity["start"] : entity["end"]] and entity["text"] == entity["text"].strip()


# --------------------------------------------------------------------------- the tiny NER run

DATA_DISTILL = {
    "students": ["cnn", "bigru"],
    "labels": "soft",
    "max_steps": 80,
    "batch_size": 16,
    "lr": 1e-2,
    "embed_dim": 8,  # the vocabulary has 14 words: PCA of the teacher's vectors gives at most 13 components
    "hidden": 16,
    "augment": {"unk": 0.1, "pos_swap": 0.2, "n_sampling": 0.3, "entity_replace": 0.3, "multiplier": 3},
}
FINETUNE = {"max_steps": 200, "lr": 2e-3, "batch_size": 16, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> Run:
    """The tiny NER data of test_ner_e2e: a fine-tuned teacher, data distillation into a CNN and a
    BiGRU tagger, and their export (int8 kept whatever its timing)."""
    tmp_path = tmp_path_factory.mktemp("ner_dd")
    recipe = write_recipe(
        tmp_path,
        stages={"finetune": FINETUNE, "data_distill": DATA_DISTILL},
        export={"quantize": "int8", "int8_keep": "always"},
    )
    run = Run(load_recipe(recipe))
    run.execute()
    return run


def test_validation_accepts_the_taggers_and_refuses_bow(tmp_path):
    lines = check_recipe(load_recipe(write_recipe(tmp_path, stages={"finetune": FINETUNE, "data_distill": DATA_DISTILL})))
    assert any("primary metric entity_f1" in line for line in lines)
    recipe = write_recipe(tmp_path, stages={"finetune": FINETUNE, "data_distill": {**DATA_DISTILL, "students": ["bow", "cnn"]}})
    with pytest.raises(UserError, match="bow has no per-token output") as info:
        check_recipe(load_recipe(recipe))
    assert info.value.where == "[stages.data_distill] students"
    noisy = {**DATA_DISTILL, "augment": {"nlpaug": [{"augmenter": "keyboard", "rate": 0.1}]}}
    with pytest.raises(UserError, match="across token edges"):
        check_recipe(load_recipe(write_recipe(tmp_path, stages={"finetune": FINETUNE, "data_distill": noisy})))


def test_entity_replacement_is_refused_for_a_task_without_entities():
    from distill.data.datasets import PreparedData
    from distill.recipe import parse_recipe
    from distill.validate import check_task_family

    recipe = parse_recipe({"stages": {"data_distill": {"augment": {"entity_replace": 0.2}}}})
    rows = [Example("a good film", "positive"), Example("a bad film", "negative")]
    with pytest.raises(UserError, match="plain texts have none") as info:
        check_task_family(recipe, PreparedData(["negative", "positive"], rows, rows, rows))
    assert info.value.where == "[stages.data_distill] augment.entity_replace"


def test_augmented_sentences_are_cached_tokens_none_held_out(ner_run):
    data = ner_run.data()
    rows = augmented_examples(ner_run)
    assert len(rows) > len(data.train)
    assert all(row.tokens and row.label is None and row.text == " ".join(row.tokens) for row in rows)
    held_out = {tuple(t.lower() for t in e.tokens) for e in data.dev + data.test + data.train}
    assert not {tuple(t.lower() for t in row.tokens) for row in rows} & held_out
    (cache,) = (ner_run.dir / "cache").glob("augmented-*.jsonl")
    assert [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()] == [list(row.tokens) for row in rows]


def test_teacher_labels_every_token_with_its_per_word_logits(ner_run):
    rows = augmented_examples(ner_run)[:20] + ner_run.data().dev[:5]
    words = [row.tokens for row in rows]
    logits = teacher_logits(ner_run, [row.text for row in rows], words=words)  # from the cache the stage wrote
    teacher_dir = ner_run.dir / "teacher"
    model, tokenizer = load_classifier(teacher_dir).eval(), AutoTokenizer.from_pretrained(teacher_dir)
    assert logits.shape == (len(rows), max(map(len, words)), 5)
    for row, tokens in enumerate(words):
        encoded = tokenizer(list(tokens), is_split_into_words=True, truncation=True, max_length=16, return_tensors="pt")
        with torch.no_grad():
            pieces = model(**encoded).logits[0]  # (pieces, tags)
        word_ids = encoded.word_ids()
        for word in range(len(tokens)):
            if word in word_ids:
                np.testing.assert_allclose(logits[row, word], pieces[word_ids.index(word)].numpy(), atol=1e-5)
            else:
                assert np.isnan(logits[row, word]).all()  # cut by max_length
        assert np.isnan(logits[row, len(tokens) :]).all()


def test_taggers_are_trained_saved_and_scored_by_entity_f1(ner_run):
    data = ner_run.data()
    done = json.loads((ner_run.dir / "done" / "data_distill.json").read_text(encoding="utf-8"))["metrics"]
    assert set(done) == {"augmented_texts", "cnn_test_entity_f1", "bigru_test_entity_f1"}
    for kind in ("cnn", "bigru"):
        folder = ner_run.dir / "shallow" / kind
        _, config, _ = load_shallow(folder)
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        assert (config.head, config.id2label) == ("token", dict(enumerate(data.labels)))
        assert metrics["train_rows"] == {"gold": len(data.train), "augmented": done["augmented_texts"]}
        decisions = torch_predictions(ner_run, RunModel(kind, kind, "student", folder), data.test)
        gold = [list(e.label) for e in data.test]
        padded = [list(p) + ["O"] * (len(g) - len(p)) for g, p in zip(gold, decisions)]
        assert metrics["test"]["entity_f1"] == pytest.approx(seqeval_f1(gold, padded), abs=1e-9) == done[f"{kind}_test_entity_f1"]
        assert metrics["test"]["entity_f1"] > 0.6  # the tags follow the words: a tagger learns them from the teacher


def test_taggers_export_with_per_token_parity_and_the_same_entity_f1(ner_run):
    summary = json.loads((ner_run.dir / "onnx" / "summary.json").read_text(encoding="utf-8"))
    entries = {entry["name"]: entry for entry in summary["models"]}
    assert list(entries) == ["teacher", "cnn", "bigru"]
    for kind in ("cnn", "bigru"):
        entry = entries[kind]
        manifest = json.loads((ner_run.dir / "onnx" / entry["manifest"]).read_text(encoding="utf-8"))
        assert (manifest["kind"], manifest["task"], manifest["token_split"]) == (kind, "token_classification", "words")
        assert entry["parity_max_abs_diff"] <= entry["parity_tolerance"] and entry["parity_batches"] >= 3
        metrics = json.loads((ner_run.dir / "shallow" / kind / "metrics.json").read_text(encoding="utf-8"))
        assert entry["test_entity_f1"] == pytest.approx(metrics["test"]["entity_f1"], abs=1e-6)
        assert entry["int8_decision"]["kept"] and 0.0 <= entry["test_entity_f1_int8"] <= 1.0


@pytest.mark.parametrize("kind", ["cnn", "bigru"])
def test_predict_and_serve_answer_entities_from_a_tagger(ner_run, distill_main, kind):
    manifest = ner_run.dir / "onnx" / f"{kind}.json"
    texts = ["a plot was awful ok", "the  film,was good"]
    predictor = OnnxPredictor(manifest, threads=1)
    results = predictor.predict(texts)
    for text, result in zip(texts, results, strict=True):
        spans = split_tokens(text, "words")
        assert result["tokens"] == [text[s:e] for s, e in spans] and len(result["tags"]) == len(spans)
        for entity in result["entities"]:
            assert entity["text"] == text[entity["start"] : entity["end"]] and 0.0 < entity["score"] <= 1.0
    examples = [Example(text, tuple(result["tags"]), tokens=tuple(result["tokens"])) for text, result in zip(texts, results)]
    expected = torch_predictions(ner_run, RunModel(kind, kind, "student", ner_run.dir / "shallow" / kind), examples)
    assert [r["tags"] for r in results] == [list(t) for t in expected]
    code, out, _ = distill_main("predict", manifest, "--text", texts[0], "--text", texts[1])
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == results
    client = TestClient(create_app(OnnxPredictor(ner_run.dir / "onnx" / f"{kind}.int8.json")))
    response = client.post("/predict", json={"texts": texts})
    assert response.status_code == 200 and set(response.json()["predictions"][0]) == {"text", "tokens", "tags", "entities"}


def test_entity_types_the_teacher_found_are_counted_by_the_label_command(ner_run):
    from distill.stages.augmentation import run_label

    summary = run_label(ner_run)
    assert summary["labelled_now"] == 0  # the stage labelled every row already
    assert set(summary["teacher_label_counts"]) <= {"ART", "EVAL", "(none)"}
    assert sum(summary["teacher_label_counts"].values()) > 0
