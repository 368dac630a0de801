"""The features adaptor on tiny Hugging Face models: what it captures, and that it lets go."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from distill.errors import UserError
from distill.models.features import FeatureExtractor

BATCH, SEQ, WIDTH, LAYERS, CLASSES = 2, 6, 32, 2, 3
SHARED = dict(vocab_size=100, num_hidden_layers=LAYERS, num_attention_heads=4, num_labels=CLASSES)


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=WIDTH, intermediate_size=37, **SHARED)
    return BertForSequenceClassification(config).eval()


def tiny_distilbert() -> nn.Module:
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=100, dim=WIDTH, n_layers=LAYERS, n_heads=4, hidden_dim=37, num_labels=CLASSES
    )
    return DistilBertForSequenceClassification(config).eval()


def tiny_roberta() -> nn.Module:
    torch.manual_seed(0)
    config = RobertaConfig(hidden_size=WIDTH, intermediate_size=37, pad_token_id=1, **SHARED)
    return RobertaForSequenceClassification(config).eval()


def tiny_electra() -> nn.Module:
    torch.manual_seed(0)
    config = ElectraConfig(embedding_size=16, hidden_size=WIDTH, intermediate_size=37, **SHARED)
    return ElectraForSequenceClassification(config).eval()


def inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 100, (BATCH, SEQ), generator=generator)  # (batch, seq)
    attention_mask = torch.ones(BATCH, SEQ, dtype=torch.long)  # (batch, seq)
    attention_mask[0, 4:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# model builder, then (layer index -> (query, key, value) modules) by their real paths
MODELS = {
    "bert": (
        tiny_bert,
        lambda m, i: _qkv(m.bert.encoder.layer[i].attention.self, "query key value"),
    ),
    "roberta": (
        tiny_roberta,
        lambda m, i: _qkv(m.roberta.encoder.layer[i].attention.self, "query key value"),
    ),
    "electra": (
        tiny_electra,
        lambda m, i: _qkv(m.electra.encoder.layer[i].attention.self, "query key value"),
    ),
    "distilbert": (
        tiny_distilbert,
        lambda m, i: _qkv(m.distilbert.transformer.layer[i].attention, "q_lin k_lin v_lin"),
    ),
}


def _qkv(attention: nn.Module, names: str) -> tuple[nn.Module, ...]:
    return tuple(getattr(attention, name) for name in names.split())


@pytest.mark.parametrize("kind", MODELS)
def test_captures_projections_of_every_layer(kind):
    build, projections_of = MODELS[kind]
    model = build()
    batch = inputs()
    with FeatureExtractor(model) as extractor, torch.no_grad():
        assert extractor.num_layers == LAYERS
        features = extractor.extract(**batch)
    assert features.num_layers == LAYERS
    assert features.logits.shape == (BATCH, CLASSES)
    assert len(features.hidden_states) == LAYERS + 1
    assert torch.equal(features.attention_mask, batch["attention_mask"])
    for layer in range(LAYERS):
        # each layer's projections read that layer's input hidden state
        query, key, value = projections_of(model, layer)
        layer_input = features.hidden_states[layer]  # (batch, seq, width)
        with torch.no_grad():
            torch.testing.assert_close(features.queries[layer], query(layer_input))
            torch.testing.assert_close(features.keys[layer], key(layer_input))
            torch.testing.assert_close(features.values[layer], value(layer_input))
        assert features.queries[layer].shape == (BATCH, SEQ, WIDTH)


def test_layer0_query_recomputed_by_hand():
    model = tiny_bert()
    with FeatureExtractor(model) as extractor, torch.no_grad():
        features = extractor.extract(**inputs())
        query = model.bert.encoder.layer[0].attention.self.query
        by_hand = features.hidden_states[0] @ query.weight.T + query.bias  # (batch, seq, width)
    torch.testing.assert_close(features.queries[0], by_hand)


def test_student_features_carry_gradients_and_teacher_features_do_not():
    model = tiny_bert()
    with FeatureExtractor(model) as extractor:
        with torch.no_grad():
            teacher_like = extractor.extract(**inputs())
        student_like = extractor.extract(**inputs())
    assert not teacher_like.queries[1].requires_grad
    student_like.queries[1].sum().backward()
    assert model.bert.encoder.layer[1].attention.self.query.weight.grad.abs().sum() > 0


def test_missing_attention_mask_means_every_token_is_real():
    model = tiny_bert()
    with FeatureExtractor(model) as extractor, torch.no_grad():
        features = extractor.extract(input_ids=inputs()["input_ids"])
    assert torch.equal(features.attention_mask, torch.ones(BATCH, SEQ, dtype=torch.long))


def test_close_removes_hooks_and_refuses_more_extraction():
    model = tiny_bert()
    query = model.bert.encoder.layer[0].attention.self.query
    extractor = FeatureExtractor(model)
    assert len(query._forward_hooks) == 1
    extractor.close()
    assert len(query._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="closed"):
        extractor.extract(**inputs())


def test_model_of_no_known_architecture_is_a_user_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UserError, match="not a supported encoder architecture"):
        FeatureExtractor(model)


def test_works_through_distributed_data_parallel(tmp_path):
    model = tiny_bert()
    batch = inputs()
    with FeatureExtractor(model) as extractor, torch.no_grad():
        plain = extractor.extract(**batch)
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=rendezvous, rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(model)
        with FeatureExtractor(wrapped) as extractor, torch.no_grad():
            assert extractor.num_layers == LAYERS
            through_ddp = extractor.extract(**batch)
    finally:
        dist.destroy_process_group()
    for layer in range(LAYERS):
        torch.testing.assert_close(through_ddp.values[layer], plain.values[layer])
    torch.testing.assert_close(through_ddp.logits, plain.logits)
