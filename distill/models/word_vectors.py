"""Word embeddings for the shallow students, read off the fine-tuned teacher.

A BOW/CNN/BiGRU student that starts from random embeddings knows a word only from the
training texts it occurs in, so a word seen a handful of times stays close to noise. The
teacher has read far more text and was fine-tuned on the task: fed one vocabulary word as a
whole text, it gives the vector its classification head reads, i.e. what the teacher makes
of that word alone. PCA brings those vectors down to the student's `embed_dim`, each
component scaled to unit standard deviation like `nn.Embedding`'s own N(0, 1) start, and
the student trains on from there (static vectors distilled from a transformer, as in
Model2Vec, but from the task-tuned teacher).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from distill.data.encoded import EncodedDataset
from distill.data.tokenize import TextEncoder
from distill.data.words import UNK_ID, UNK_MARKER, WordVocab
from distill.errors import UserError
from distill.models.architectures import architecture
from distill.models.teacher import head_of
from distill.report.evaluate import predict_logits

WORD_BATCH = 256  # one-word texts per teacher forward pass


class ClassifierInput(nn.Module):
    """A classifier that returns what its head's last linear reads: (batch, hidden), or per piece
    (batch, pieces, hidden) for a per-token head.

    That is the pooled vector, whatever the pooling ([CLS] through BERT's pooler or RoBERTa's
    dense layer, mean of tokens, mean of the last layers' [CLS]); a forward pre-hook reads it,
    so no pooling code is repeated here. `architectures` names that linear per family.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        head = model.get_submodule(architecture(model).head_linear(head_of(model.config)))
        self.model = model
        self.head = head
        self.train(model.training)  # a new module says "training"; callers restore this mode

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            self.model(**inputs)
        finally:
            handle.remove()
        return captured[0]  # (batch, hidden)


def teacher_word_vectors(
    model: nn.Module, encoder: TextEncoder, words: Sequence[str], device: torch.device | str = "cpu"
) -> np.ndarray:
    """The teacher's vector for each word given as a one-word text, (len(words), hidden): the pooled
    vector, or for a per-token head the vector its head reads at the word's first piece (zeros for
    a word the tokenizer gives no piece)."""
    per_token = head_of(model.config) == "token"
    dataset = EncodedDataset(encoder, list(words), words=[[word] for word in words] if per_token else None)
    vectors = predict_logits(ClassifierInput(model), dataset, device, WORD_BATCH).numpy()
    return np.nan_to_num(vectors[:, 0]) if per_token else vectors  # (words, 1, hidden) per token


def reduce_dimensions(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` principal components of the rows, each scaled to a standard deviation of 1.

    Per component, not overall: the leading components of a teacher's vectors spread far
    wider than the rest, and int8 export quantizes an embedding matrix with one scale for
    all of it, which would round the narrow components to zero (on tweets, one overall
    scale cost the int8 BOW student 1.5 points of accuracy).
    """
    rows, width = vectors.shape
    if dim > min(rows, width):
        raise UserError(
            f"embed_dim {dim} exceeds what {rows} teacher vectors of width {width} can give",
            "[stages.data_distill] embed_dim",
            f'use embed_dim <= {min(rows, width)}, or embeddings = "random"',
        )
    reduced = PCA(n_components=dim, svd_solver="full").fit_transform(vectors)  # (rows, dim)
    return (reduced / reduced.std(axis=0)).astype(np.float32)


def teacher_embeddings(
    model: nn.Module,
    encoder: TextEncoder,
    vocab: WordVocab,
    dim: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """An embedding matrix (len(vocab), dim) for `vocab` from the teacher's word vectors.

    `<unk>` gets the vector of the teacher's own unknown token (UNK noise writes that token
    into augmented texts, and the word tokenizer reads it back as `<unk>`); `<pad>` (row 0,
    which WordVocab guarantees with `<unk>` as row 1) stays zero.
    """
    words = [UNK_MARKER, *vocab.tokens[UNK_ID + 1 :]]
    reduced = reduce_dimensions(teacher_word_vectors(model, encoder, words, device), dim)
    return torch.cat([torch.zeros(1, dim), torch.from_numpy(reduced)])  # (len(vocab), dim)
