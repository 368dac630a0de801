"""distill: compress fine-tuned BERT-style teachers into tiny students that serve fast on a CPU."""

__version__ = "0.1.0"
