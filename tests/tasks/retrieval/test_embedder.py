import copy
import socket

import numpy as np
import pytest
import torch

from dspex.exceptions import ConfigurationError, RetrievalError
from tasks.retrieval import embedder as embedder_module
from tasks.retrieval.embedder import MODEL_NAME, get_embedder, resolve_device


def test_encode_gives_normalized_float32_rows(minilm):
    vectors = minilm.encode(["The Nile flows north.", "Photosynthesis makes glucose."])
    assert vectors.shape == (2, 384) == (2, minilm.dimension)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_encode_matches_sentence_transformers_called_directly(minilm):
    texts = [f"passage number {i} about rivers and mountains" for i in range(10)]
    ours = minilm.encode(texts, batch_size=4)
    direct = minilm.model.encode(texts, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, direct, atol=1e-6)


def test_batch_size_does_not_change_the_embeddings(minilm, monkeypatch):
    texts = ["short", "a somewhat longer sentence about the Moon", "mid length text here"]
    monkeypatch.setenv("DSPEX_EMBEDDING_BATCH_SIZE", "1")
    one_at_a_time = minilm.encode(texts)
    np.testing.assert_allclose(one_at_a_time, minilm.encode(texts, batch_size=64), atol=1e-5)


def test_similar_texts_are_closer_than_unrelated_ones(minilm):
    a, b, c = minilm.encode(
        ["The capital of France is Paris.", "Paris is France's capital city.", "Bees dance."]
    )
    assert float(a @ b) > float(a @ c) + 0.3


def test_empty_input_gives_an_empty_matrix(minilm):
    assert minilm.encode([]).shape == (0, 384)


def test_bad_texts_are_rejected(minilm):
    with pytest.raises(RetrievalError, match="not one string"):
        minilm.encode("one string")
    with pytest.raises(RetrievalError, match="text 1 to encode must be a string, got int"):
        minilm.encode(["ok", 5])


def test_one_model_per_process_and_device(minilm):
    assert get_embedder("cpu") is minilm
    assert get_embedder("CPU") is minilm
    assert minilm.device == "cpu"
    assert minilm.model_id.startswith(MODEL_NAME)
    # DSPy optimizers deep-copy programs; the model must be shared, not copied.
    assert copy.deepcopy(minilm) is minilm


def test_auto_device_follows_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setenv("DSPEX_EMBEDDING_DEVICE", "cpu")
    assert resolve_device() == "cpu"


def test_bad_devices_are_configuration_errors(monkeypatch):
    with pytest.raises(ConfigurationError, match="'tpu' is not one of"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigurationError, match="torch sees no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setenv("DSPEX_EMBEDDING_DEVICE", "gpu0")
    with pytest.raises(ConfigurationError, match="DSPEX_EMBEDDING_DEVICE"):
        get_embedder()


def test_loading_the_model_makes_no_network_connection(minilm, monkeypatch, capfd):
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled by the test")

    from transformers.utils import logging as transformers_logging

    bars_before = transformers_logging.is_progress_bar_enabled()
    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = embedder_module._load_model("cpu")
    assert attempts == []
    assert model.encode(["ok"]).shape == (1, 384)
    # No progress bar on stderr, and the caller's progress-bar setting is restored.
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled() == bars_before
