"""MLM pretraining pieces: dynamic / whole-word masking, character vocabularies, MLM head."""

from __future__ import annotations

import json
import random
import string
from types import SimpleNamespace

import jieba
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel
from transformers import BertForMaskedLM, BertTokenizerFast

from distill.data.mlm import MaskingCollator, build_char_vocab, make_char_tokenizer
from distill.errors import UserError
from distill.models.mlm import load_for_mlm, new_mlm_model, save_encoder
from tiny_architectures import ARCHITECTURES, WORDS, tiny_encoder_dir, tokenizer_for

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORD_PIECES = ["the", "cat", "dog", "play", "##ing", "##ed", "run", "##ner", "sun", "##ny",
               "un", "##happy", "walk", "quick", "##ly", "is", "on", "mat", ",", "."]
ENGLISH_VOCAB = (SPECIALS + list(string.ascii_lowercase)
                 + [f"##{letter}" for letter in string.ascii_lowercase] + WORD_PIECES)
ENGLISH_WORDS = ["the", "cat", "dog", "playing", "played", "runner", "sunny", "unhappy", "walks",
                 "quickly", "a", "is", "on", "mat", "xyz", "bq", ",", "."]
CHINESE_SENTENCES = ["我们热爱北京天安门", "中国人民解放军进入北京", "经济发展需要科学技术",
                     "人民群众的生活水平不断提高", "北京大学的学生参观天安门广场"]


def english_texts(count: int, seed: int = 0) -> list[str]:
    """Sentences of 3 to 40 words, so batches hold padding."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(ENGLISH_WORDS, k=rng.randint(3, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def english_tokenizer(tmp_path_factory) -> BertTokenizerFast:
    vocab_file = tmp_path_factory.mktemp("en") / "vocab.txt"
    vocab_file.write_text("\n".join(ENGLISH_VOCAB) + "\n", encoding="utf-8")
    return BertTokenizerFast(str(vocab_file))


@pytest.fixture(scope="module")
def chinese_tokenizer(tmp_path_factory) -> BertTokenizerFast:
    vocab = build_char_vocab(CHINESE_SENTENCES, min_freq=1)
    return make_char_tokenizer(vocab, tmp_path_factory.mktemp("zh"))


def encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return tokenizer(texts, padding=True, truncation=True, max_length=128,
                     return_tensors="pt", return_special_tokens_mask=True)


def masked_batches(collator, tokenizer, batches: int, batch_size: int = 64):
    """(original encoding, masked batch) pairs over fresh texts."""
    for index in range(batches):
        texts = english_texts(batch_size, seed=index)
        yield encode(tokenizer, texts), collator(texts)


def test_mask_rate_and_80_10_10_split(english_tokenizer):
    collator = MaskingCollator(english_tokenizer, mask_prob=0.15, seed=0)
    maskable = selected = to_mask = unchanged = randomised = 0
    for original, batch in masked_batches(collator, english_tokenizer, batches=40):
        is_maskable = (original["special_tokens_mask"] == 0) & (original["attention_mask"] == 1)
        is_selected = batch["labels"] != -100
        ids, before = batch["input_ids"][is_selected], original["input_ids"][is_selected]
        maskable += int(is_maskable.sum())
        selected += int(is_selected.sum())
        to_mask += int((ids == english_tokenizer.mask_token_id).sum())
        unchanged += int((ids == before).sum())
        randomised += int(((ids != before) & (ids != english_tokenizer.mask_token_id)).sum())
    assert maskable > 50_000
    assert abs(selected / maskable - 0.15) < 0.01
    assert abs(to_mask / selected - 0.8) < 0.015
    # a random replacement hits the original id about 1 time in 80, which counts as unchanged
    assert abs(unchanged / selected - 0.1) < 0.012
    assert abs(randomised / selected - 0.1) < 0.012


def test_labels_hold_original_ids_exactly_where_predicted(english_tokenizer):
    collator = MaskingCollator(english_tokenizer, seed=1)
    special_ids = set(english_tokenizer.all_special_ids) - {english_tokenizer.mask_token_id}
    saw_padding = False
    for original, batch in masked_batches(collator, english_tokenizer, batches=5):
        labels, ids, before = batch["labels"], batch["input_ids"], original["input_ids"]
        is_selected = labels != -100
        assert torch.equal(labels[is_selected], before[is_selected])
        assert torch.equal(ids[~is_selected], before[~is_selected])
        protected = (original["special_tokens_mask"] == 1) | (original["attention_mask"] == 0)
        assert not is_selected[protected].any()
        assert not set(ids[is_selected].tolist()) & special_ids
        assert torch.equal(batch["attention_mask"], original["attention_mask"])
        assert torch.equal(batch["token_type_ids"], torch.zeros_like(before))
        saw_padding |= bool((original["attention_mask"] == 0).any())
    assert saw_padding


def test_masks_are_redrawn_each_batch_and_reproduce_from_the_seed(english_tokenizer):
    texts = english_texts(16)
    first = MaskingCollator(english_tokenizer, seed=3)
    second = MaskingCollator(english_tokenizer, seed=3)
    batch_a, batch_b = first(texts), first(texts)
    assert not torch.equal(batch_a["labels"], batch_b["labels"])
    assert torch.equal(second(texts)["input_ids"], batch_a["input_ids"])
    assert torch.equal(second(texts)["labels"], batch_b["labels"])
    other_seed = MaskingCollator(english_tokenizer, seed=4)(texts)
    assert not torch.equal(other_seed["labels"], batch_a["labels"])


def test_generator_state_resumes_the_same_masks(english_tokenizer):
    texts = english_texts(16)
    collator = MaskingCollator(english_tokenizer, seed=5)
    collator(texts)
    state = collator.state_dict()
    expected = collator(texts)
    resumed = MaskingCollator(english_tokenizer, seed=99)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(texts)["input_ids"], expected["input_ids"])


def english_words(tokens: list[str]) -> list[list[int]]:
    """Positions of each word: a non-special token followed by its ## continuations."""
    words: list[list[int]] = []
    for position, token in enumerate(tokens):
        if token in SPECIALS:
            continue
        if token.startswith("##"):
            words[-1].append(position)
        else:
            words.append([position])
    return words


def marked_words(tokens: list[str], special: list[int]) -> list[list[int]]:
    """Positions of each word of byte-level BPE or SentencePiece: the first piece, or one led by
    `Ġ` / `▁`, followed by the pieces without a mark."""
    words: list[list[int]] = []
    for position, token in enumerate(tokens):
        if special[position]:
            continue
        if not words or token.startswith(("Ġ", "▁")):
            words.append([position])
        else:
            words[-1].append(position)
    return words


class WordTally:
    """Checks that every word is selected whole and counts what a rate test needs."""

    def __init__(self) -> None:
        self.multi_piece_selected = self.tokens = self.selected = 0

    def add(self, words: list[list[int]], is_selected: list[bool], pieces: list[str]) -> None:
        for word in words:
            flags = {is_selected[position] for position in word}
            assert len(flags) == 1, [pieces[position] for position in word]
            self.multi_piece_selected += len(word) > 1 and is_selected[word[0]]
            self.tokens += len(word)
            self.selected += len(word) * is_selected[word[0]]


def test_english_whole_word_masks_continuations_with_their_head(english_tokenizer):
    collator = MaskingCollator(english_tokenizer, whole_word=True, seed=0)
    tally = WordTally()
    for original, batch in masked_batches(collator, english_tokenizer, batches=20):
        for row in range(len(batch["labels"])):
            pieces = english_tokenizer.convert_ids_to_tokens(original["input_ids"][row].tolist())
            tally.add(english_words(pieces), (batch["labels"][row] != -100).tolist(), pieces)
    assert tally.multi_piece_selected > 100
    assert abs(tally.selected / tally.tokens - 0.15) < 0.02


@pytest.mark.parametrize("architecture", ["roberta", "xlm-roberta", "deberta-v2", "modernbert"])
def test_whole_word_masking_follows_bpe_and_sentencepiece_words(architecture):
    """A teacher without WordPiece marks a word's first piece instead (byte-level BPE `Ġ`,
    SentencePiece `▁`): its words are still masked whole, at the selection rate."""
    tokenizer = tokenizer_for(architecture)
    collator = MaskingCollator(tokenizer, mask_prob=0.3, whole_word=True, seed=0)
    rng = random.Random(0)
    # letters only: byte-level BPE pre-tokenisation splits digits from letters, a word of its own
    vocabulary = WORDS + ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 6))) for _ in range(30)]
    tally = WordTally()
    for _ in range(10):
        texts = [" ".join(rng.choices(vocabulary, k=rng.randint(3, 20))) for _ in range(32)]
        original = encode(tokenizer, texts)
        batch = collator(texts)
        for row in range(len(texts)):
            pieces = tokenizer.convert_ids_to_tokens(original["input_ids"][row].tolist())
            special = ((original["special_tokens_mask"][row] == 1) | (original["attention_mask"][row] == 0)).tolist()
            words = marked_words(pieces, special)
            assert len(words) == len(texts[row].split())
            tally.add(words, (batch["labels"][row] != -100).tolist(), pieces)
    assert tally.multi_piece_selected > 100
    assert abs(tally.selected / tally.tokens - 0.3) < 0.04


def test_whole_word_masking_needs_a_fast_tokenizer(english_tokenizer):
    slow = SimpleNamespace(mask_token_id=english_tokenizer.mask_token_id, is_fast=False)
    with pytest.raises(UserError, match="fast tokenizer"):
        MaskingCollator(slow, whole_word=True)


def test_chinese_whole_word_masks_the_characters_of_a_jieba_word(chinese_tokenizer):
    collator = MaskingCollator(chinese_tokenizer, mask_prob=0.3, whole_word=True, language="zh")
    multi_char_selected = 0
    for _ in range(30):
        batch = collator(CHINESE_SENTENCES)
        for row, sentence in enumerate(CHINESE_SENTENCES):
            is_selected = (batch["labels"][row] != -100).tolist()
            # one token per character, between [CLS] and [SEP]
            assert int(batch["attention_mask"][row].sum()) == len(sentence) + 2
            start = 1  # after [CLS]
            for word in jieba.lcut(sentence):
                flags = set(is_selected[start:start + len(word)])
                assert len(flags) == 1, word
                multi_char_selected += len(word) > 1 and is_selected[start]
                start += len(word)
    assert multi_char_selected > 50


def test_invalid_settings_are_user_errors(english_tokenizer):
    with pytest.raises(UserError, match="mask_prob"):
        MaskingCollator(english_tokenizer, mask_prob=0.0)
    with pytest.raises(UserError, match="language"):
        MaskingCollator(english_tokenizer, language="fr")


def test_char_vocab_orders_by_frequency_then_code_point():
    texts = ["abca", "Bd 中中中", "cc\t"]  # counts after lowercasing: a 2, b 2, c 3, d 1, 中 3
    assert build_char_vocab(texts) == SPECIALS + ["c", "中", "a", "b"]
    assert build_char_vocab(texts, min_freq=1) == SPECIALS + ["c", "中", "a", "b", "d"]
    assert build_char_vocab(texts, min_freq=3) == SPECIALS + ["c", "中"]
    assert build_char_vocab(texts, min_freq=1, max_size=6) == SPECIALS + ["c"]
    with pytest.raises(UserError):
        build_char_vocab(texts, min_freq=0)


def test_char_tokenizer_splits_every_character(tmp_path):
    vocab = SPECIALS + ["中", "国", "h", "e", "l", "o", "!", "１"]
    tokenizer = make_char_tokenizer(vocab, tmp_path)
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").split("\n")[:len(vocab)] == vocab
    assert (tmp_path / "tokenizer.json").is_file()
    assert tokenizer.tokenize("Hello中国! x １") == ["h", "##e", "##l", "##l", "##o", "中", "国",
                                                     "!", "[UNK]", "１"]
    assert tokenizer.tokenize("x１") == ["[UNK]"]  # WordPiece: an unknown piece spoils its word
    assert tokenizer.convert_tokens_to_ids(vocab) == list(range(len(vocab)))
    # CJK characters and punctuation always stand alone, so they need no ## form
    assert len(tokenizer) == len(vocab) + 5
    assert tokenizer.convert_tokens_to_ids("##中") == tokenizer.unk_token_id
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("Hello中国")["input_ids"] == tokenizer("Hello中国")["input_ids"]


def tiny_config(vocab_size: int = 100) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


def assert_tied(model) -> None:
    decoder = model.get_output_embeddings().weight
    assert decoder.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_new_mlm_model_predicts_through_the_tied_embeddings():
    torch.manual_seed(0)
    model = new_mlm_model(vocab_size=100, layers=2, hidden=32, heads=4, intermediate=64,
                          max_position=64).eval()
    assert_tied(model)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 32)
    input_ids = torch.randint(5, 100, (2, 7))  # (batch, seq)
    embeddings = model.bert.embeddings.word_embeddings.weight  # (vocab, hidden)
    with torch.no_grad():
        hidden = model.cls.predictions.transform(model.bert(input_ids).last_hidden_state)
        expected = hidden @ embeddings.T + model.cls.predictions.bias  # (batch, seq, vocab)
        assert torch.allclose(model(input_ids).logits, expected, atol=1e-5)
    with pytest.raises(UserError, match="heads"):
        new_mlm_model(vocab_size=100, layers=2, hidden=30, heads=4, intermediate=64,
                      max_position=64)


def test_load_for_mlm_adds_a_tied_head_and_keeps_every_encoder_weight(tmp_path):
    torch.manual_seed(0)
    encoder = BertModel(tiny_config()).eval()
    encoder.save_pretrained(tmp_path)
    model = load_for_mlm(tmp_path).eval()
    assert isinstance(model, BertForMaskedLM)
    assert_tied(model)
    loaded = model.bert.state_dict()
    for key, value in encoder.state_dict().items():
        if not key.startswith("pooler."):
            assert torch.equal(loaded[key], value), key
    input_ids = torch.randint(5, 100, (2, 9))  # (batch, seq)
    with torch.no_grad():
        assert torch.equal(model.bert(input_ids).last_hidden_state,
                           encoder(input_ids).last_hidden_state)
    head = model.cls.predictions.transform
    assert torch.equal(head.LayerNorm.weight, torch.ones(32))
    assert 0.01 < float(head.dense.weight.detach().std()) < 0.03  # initializer_range 0.02


def test_load_for_mlm_keeps_an_existing_head(tmp_path):
    torch.manual_seed(0)
    saved = BertForMaskedLM(tiny_config())
    torch.nn.init.normal_(saved.cls.predictions.transform.dense.weight, std=1.0)
    saved.save_pretrained(tmp_path)
    model = load_for_mlm(tmp_path)
    assert torch.equal(model.cls.predictions.transform.dense.weight,
                       saved.cls.predictions.transform.dense.weight)
    assert_tied(model)


def test_load_for_mlm_refuses_missing_encoder_weights(tmp_path):
    BertModel(tiny_config()).save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["num_hidden_layers"] = 3
    config_file.write_text(json.dumps(config))
    with pytest.raises(UserError, match="encoder.layer.2"):
        load_for_mlm(tmp_path)
    with pytest.raises(UserError, match="config.json"):
        load_for_mlm(tmp_path / "absent")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_mlm_pretraining_pieces_work_on_every_teacher_architecture(architecture, tmp_path):
    """Further pretraining of any supported teacher: a tied MLM head over every encoder weight,
    a whole-word batch whose loss is the cross-entropy of the masked positions, and an encoder
    saved back that a classifier loads whole."""
    encoder_dir = tiny_encoder_dir(tmp_path / "teacher", architecture)
    encoder = AutoModel.from_pretrained(encoder_dir).eval()
    model = load_for_mlm(encoder_dir).eval()
    assert_tied(model)
    loaded = model.base_model.state_dict()
    for key, value in encoder.state_dict().items():
        if not key.startswith("pooler."):
            assert torch.equal(loaded[key], value), key

    tokenizer = tokenizer_for(architecture)
    batch = MaskingCollator(tokenizer, mask_prob=0.3, whole_word=True, seed=0,
                            token_types=False)(["good film the number", "bad context sentence negative"])
    assert (batch["labels"] != -100).any()
    with torch.no_grad():
        output = model(**batch)
    targets = batch["labels"] != -100  # (batch, seq)
    expected = torch.nn.functional.cross_entropy(output.logits[targets], batch["labels"][targets])
    assert torch.isfinite(output.loss) and torch.allclose(output.loss, expected, atol=1e-5)

    save_encoder(model, tokenizer, tmp_path / "pretrained")
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pretrained", num_labels=3)
    reloaded = classifier.base_model.state_dict()
    for key, value in model.base_model.state_dict().items():
        assert torch.equal(reloaded[key], value), key


def test_saved_encoder_loads_into_a_classifier_with_every_weight(tmp_path, english_tokenizer):
    torch.manual_seed(0)
    model = new_mlm_model(vocab_size=len(english_tokenizer), layers=2, hidden=32, heads=4,
                          intermediate=64, max_position=64)
    save_encoder(model, english_tokenizer, tmp_path)
    assert model.config.architectures is None  # the caller's config is left as it was
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    loaded = classifier.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("bert."):
            assert torch.equal(loaded[key], value), key
    text = "the cat is playing"
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == english_tokenizer(text)["input_ids"]
    with pytest.raises(ValueError, match="embeddings"):
        save_encoder(new_mlm_model(10, 1, 32, 4, 64, 64), english_tokenizer, tmp_path / "small")


@pytest.mark.slow
def test_real_minilm_encoder_gets_a_tied_head():
    from safetensors.torch import load_file

    from distill.models.teacher import resolve_model_path

    path = resolve_model_path("builtin:minilm-l6")
    model = load_for_mlm(path)
    assert_tied(model)
    stored = load_file(str(path / "model.safetensors"))
    # the masked LM has no pooler; position_ids is a buffer that transformers no longer stores
    weights = {key: value for key, value in stored.items()
               if not key.startswith("pooler.") and key != "embeddings.position_ids"}
    loaded = model.bert.state_dict()
    assert set(weights) == set(loaded)
    for key, value in weights.items():
        assert torch.equal(loaded[key], value), key
