"""Shallow students: values of the pooling pieces, padding invariance, training, save/load, ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from distill.data.words import WordVocab
from distill.errors import UserError
from distill.models.size import count_parameters
from distill.models.shallow import (
    SHALLOW_KINDS,
    ShallowConfig,
    build_shallow,
    load_shallow,
    masked_max_over_time,
    reverse_within_length,
    save_shallow,
)

VOCAB_SIZE = 100


def tiny_config(kind: str, dropout: float = 0.0) -> ShallowConfig:
    return ShallowConfig(
        kind=kind,
        vocab_size=VOCAB_SIZE,
        num_labels=3,
        embed_dim=32,
        hidden=32,
        channels=16,
        kernel_sizes=(2, 3, 4),
        dropout=dropout,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
    )


def tiny_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_shallow(tiny_config(kind)).eval()


# Right-padded with 0; the third row is an empty text.
IDS = torch.tensor([[5, 6, 7, 8, 9], [3, 4, 0, 0, 0], [0, 0, 0, 0, 0]])  # (3, 5)


def test_config_defaults_and_validation():
    config = ShallowConfig(kind="cnn", vocab_size=10, num_labels=2)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert config.kernel_sizes == (2, 3, 4)
    with pytest.raises(UserError, match="unknown shallow student"):
        ShallowConfig(kind="lstm", vocab_size=10, num_labels=2)
    with pytest.raises(UserError, match="id2label"):
        ShallowConfig(kind="bow", vocab_size=10, num_labels=2, id2label={0: "a"})
    with pytest.raises(UserError, match="kernel_sizes"):
        ShallowConfig(kind="cnn", vocab_size=10, num_labels=2, kernel_sizes=())


def test_config_json_round_trip_and_unknown_keys():
    config = tiny_config("bigru")
    restored = ShallowConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    with pytest.raises(UserError, match="unknown shallow config keys"):
        ShallowConfig.from_dict({**config.to_dict(), "layers": 2})


def test_masked_max_over_time_by_hand():
    features = torch.tensor([[[1.0, -2.0], [5.0, -1.0], [9.0, 9.0]], [[-3.0, -4.0], [7.0, 7.0], [8.0, 8.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    pooled = masked_max_over_time(features, mask)
    # row 0: max over positions 0-1; row 1 (empty): position 0 only
    torch.testing.assert_close(pooled, torch.tensor([[5.0, -1.0], [-3.0, -4.0]]))


def test_reverse_within_length_by_hand():
    mask = IDS != 0
    indices = reverse_within_length(mask)
    torch.testing.assert_close(indices, torch.tensor([[4, 3, 2, 1, 0], [1, 0, 2, 3, 4], [0, 1, 2, 3, 4]]))
    assert IDS.gather(1, indices)[1].tolist() == [4, 3, 0, 0, 0]


def test_bow_is_an_mlp_over_the_mean_of_real_word_embeddings():
    model = tiny_model("bow")
    embeddings = model.embeddings.weight
    means = torch.stack([embeddings[[5, 6, 7, 8, 9]].mean(0), embeddings[[3, 4]].mean(0), torch.zeros(32)])
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), model.classifier(means))


def test_cnn_matches_an_explicit_window_loop():
    model = tiny_model("cnn")
    row = [3, 4]  # shorter than the widest kernel (4)
    with torch.no_grad():
        expected = []
        for convolution in model.convolutions:
            width = convolution.kernel_size[0]
            padded = row + [0] * (width - 1)
            windows = [
                convolution(model.embeddings.weight[padded[start : start + width]].T.unsqueeze(0))[0, :, 0]
                for start in range(len(row))
            ]  # each (channels,)
            expected.append(F.relu(torch.stack(windows)).amax(0))
        torch.testing.assert_close(model(torch.tensor([row])), model.classifier(torch.cat(expected)).unsqueeze(0))


@pytest.mark.parametrize("kind", SHALLOW_KINDS)
def test_forward_shapes(kind):
    model = tiny_model(kind)
    with torch.no_grad():
        assert model(IDS).shape == (3, 3)
        assert model(torch.tensor([[7]])).shape == (1, 3)  # one word: shorter than every kernel
        assert torch.isfinite(model(IDS)).all()


@pytest.mark.parametrize("kind", SHALLOW_KINDS)
def test_extra_padding_does_not_change_logits(kind):
    model = tiny_model(kind)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), model(F.pad(IDS, (0, 6))), rtol=0, atol=1e-6)
        # each row alone, without the batch's padding
        alone = torch.cat([model(torch.tensor([[5, 6, 7, 8, 9]])), model(torch.tensor([[3, 4]]))])
        torch.testing.assert_close(model(IDS[:2]), alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", SHALLOW_KINDS)
def test_a_few_steps_fit_a_separable_set(kind):
    torch.manual_seed(0)
    model = build_shallow(tiny_config(kind, dropout=0.1))
    # class 0 uses words 10-19, class 1 words 20-29, class 2 words 30-39; rows of 2 to 6 words
    rows, labels = [], []
    generator = torch.Generator().manual_seed(1)
    for label in range(3):
        for _ in range(8):
            length = int(torch.randint(2, 7, (1,), generator=generator))
            rows.append(torch.randint(10 + 10 * label, 20 + 10 * label, (length,), generator=generator))
            labels.append(label)
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (24, longest)
    targets = torch.tensor(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(ids), targets)

    model.eval()
    with torch.no_grad():
        before = loss().item()
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = loss().item()
        accuracy = (model(ids).argmax(-1) == targets).float().mean().item()
    assert after < 0.3 * before
    assert accuracy == 1.0


@pytest.mark.parametrize("kind", SHALLOW_KINDS)
def test_save_load_round_trip_gives_equal_logits(kind, tmp_path):
    model = tiny_model(kind)
    config = tiny_config(kind)
    vocab = WordVocab(["<pad>", "<unk>", *(f"w{index}" for index in range(VOCAB_SIZE - 2))])
    save_shallow(model, config, vocab, tmp_path / "student")
    assert {path.name for path in (tmp_path / "student").iterdir()} == {
        "model.safetensors",
        "config.json",
        "vocab.json",
    }
    loaded, loaded_config, loaded_vocab = load_shallow(tmp_path / "student")
    assert loaded_config == config
    assert loaded_vocab.tokens == vocab.tokens
    assert not loaded.training
    assert count_parameters(loaded) == count_parameters(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS), model(IDS), rtol=0, atol=0)


def test_save_and_load_errors(tmp_path):
    model, config = tiny_model("bow"), tiny_config("bow")
    with pytest.raises(UserError, match="vocabulary has 3 words"):
        save_shallow(model, config, WordVocab.build([["a"]]), tmp_path / "x")
    with pytest.raises(UserError, match="not a shallow student folder"):
        load_shallow(tmp_path / "nowhere")


def test_count_parameters_by_hand():
    model = build_shallow(ShallowConfig(kind="bow", vocab_size=10, num_labels=2, embed_dim=4, hidden=3))
    assert count_parameters(model) == 10 * 4 + (4 * 3 + 3) + (3 * 2 + 2)


@pytest.mark.parametrize("kind", SHALLOW_KINDS)
def test_onnx_export_has_dynamic_batch_and_length(kind, tmp_path):
    import onnxruntime

    model = tiny_model(kind)
    path = tmp_path / f"{kind}.onnx"
    torch.onnx.export(
        model,
        (IDS,),
        str(path),
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "length"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # shapes the export never saw: one word, and longer rows in a bigger batch
    for ids in (torch.tensor([[7]]), torch.randint(1, VOCAB_SIZE, (4, 11)), IDS):
        (logits,) = session.run(["logits"], {"input_ids": ids.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(ids).numpy(), atol=1e-5)


# ------------------------------------------------------------------ per-token heads (tagging)


def tagger(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_config(kind)
    config.head = "token"
    return build_shallow(config).eval()


def test_bow_has_no_per_token_head():
    with pytest.raises(UserError, match="bow has no per-token output"):
        ShallowConfig(kind="bow", vocab_size=10, num_labels=2, head="token")
    with pytest.raises(UserError, match="unknown head"):
        ShallowConfig(kind="cnn", vocab_size=10, num_labels=2, head="span")


@pytest.mark.parametrize("kind", ["cnn", "bigru"])
def test_tagger_gives_one_row_per_word_whatever_the_padding(kind):
    model = tagger(kind)
    with torch.no_grad():
        logits = model(IDS)
        assert logits.shape == (3, 5, 3) and model(torch.tensor([[7]])).shape == (1, 1, 3)
        torch.testing.assert_close(model(F.pad(IDS, (0, 6)))[:, :5], logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(torch.tensor([[3, 4]]))[0], logits[1, :2], rtol=0, atol=1e-6)


def test_cnn_tagger_matches_an_explicit_loop_of_windows_centred_on_each_word():
    model = tagger("cnn")
    row = [3, 4, 5, 6, 7]
    with torch.no_grad():
        expected = []
        for word in range(len(row)):
            features = []
            for convolution in model.convolutions:
                width = convolution.kernel_size[0]
                before = (width - 1) // 2  # width 2: the word and the next; 3: one each side; 4: one before, two after
                window = [row[i] if 0 <= i < len(row) else 0 for i in range(word - before, word - before + width)]
                features.append(F.relu(convolution(model.embeddings.weight[window].T.unsqueeze(0))[0, :, 0]))
            expected.append(model.classifier(torch.cat(features)))
        torch.testing.assert_close(model(torch.tensor([row]))[0], torch.stack(expected))


def test_bigru_tagger_reads_both_directions_at_each_word():
    model = tagger("bigru")
    row = [3, 4, 5, 6]
    with torch.no_grad():
        embedded = model.embeddings(torch.tensor([row]))
        forward_states, _ = model.forward_gru(embedded)  # word t: words 0..t read left to right
        backward_states, _ = model.backward_gru(embedded.flip(1))  # position t: word 3 - t, read from the end
        features = torch.cat([forward_states, backward_states.flip(1)], dim=-1)  # both at word t
        torch.testing.assert_close(model(torch.tensor([row])), model.classifier(features))
        # the text student (same seed, so the same weights: only the head differs) pools the same
        # features, max over the words of each direction
        pooled = torch.cat([forward_states.amax(1), backward_states.amax(1)], dim=-1)  # (1, 2 * hidden)
        torch.testing.assert_close(tiny_model("bigru")(torch.tensor([row])), model.classifier(pooled))
