import logging
import threading

import numpy as np
import pytest

from dspex.exceptions import RetrievalError
from tasks.retrieval.index import build_index, index_cache_stats
from tasks.retrieval.inputs import to_corpus


def _corpus(n=20, tag=""):
    return to_corpus([{"id": f"d{i}", "title": f"T{i}", "text": f"passage {tag}{i}"} for i in range(n)])


def _index_files(tmp_path):
    folder = tmp_path / "dspex-home" / "indexes"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_second_build_of_the_same_content_does_not_encode(hash_encoder):
    first = build_index(_corpus(), hash_encoder)
    second = build_index(_corpus(), hash_encoder)  # a different object with equal content
    assert second is first
    assert hash_encoder.calls == [20]
    assert index_cache_stats().memory_hits == 1 and index_cache_stats().builds == 1


def test_different_content_is_a_different_index(hash_encoder):
    a = build_index(_corpus(tag="a"), hash_encoder)
    b = build_index(_corpus(tag="b"), hash_encoder)
    assert a.key != b.key
    assert hash_encoder.calls == [20, 20]


def test_the_model_is_part_of_the_key(hash_encoder):
    class OtherModel:
        model_id = "test/other"
        dimension = 8

        def encode(self, texts, *, batch_size=None):
            return hash_encoder.inner.encode(texts)

    assert build_index(_corpus(), hash_encoder).key != build_index(_corpus(), OtherModel()).key


def test_a_new_process_reloads_the_matrix_from_disk(hash_encoder, tmp_path):
    from tasks.retrieval.index import clear_index_cache

    first = build_index(_corpus(), hash_encoder)
    files = _index_files(tmp_path)
    assert [f.name for f in files] == [f"{first.key}.npy"]  # no temporary file left behind
    clear_index_cache()  # what a fresh process sees
    again = build_index(_corpus(), hash_encoder)
    assert again is not first
    assert hash_encoder.calls == [20]
    assert index_cache_stats().disk_hits == 1
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    # A plain .npy, readable without pickle.
    np.testing.assert_array_equal(np.load(files[0], allow_pickle=False), first.embeddings)


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"not a numpy file"),
        lambda path: path.write_bytes(path.read_bytes()[:100]),
        lambda path: np.save(path, np.zeros((3, 8), dtype=np.float32)),
        lambda path: np.save(path, np.zeros((20, 8), dtype=np.float64)),
        lambda path: np.save(path, np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True),
    ],
    ids=["garbage", "truncated", "wrong-shape", "wrong-dtype", "pickled-objects"],
)
def test_a_bad_cache_file_is_logged_and_rebuilt(damage, hash_encoder, tmp_path, caplog):
    from tasks.retrieval.index import clear_index_cache

    first = build_index(_corpus(), hash_encoder)
    damage(_index_files(tmp_path)[0])
    clear_index_cache()
    with caplog.at_level(logging.WARNING, logger="tasks.retrieval.index"):
        rebuilt = build_index(_corpus(), hash_encoder)
    assert "re-encoding" in caplog.text
    assert hash_encoder.calls == [20, 20]
    np.testing.assert_array_equal(rebuilt.embeddings, first.embeddings)
    np.testing.assert_array_equal(np.load(_index_files(tmp_path)[0], allow_pickle=False), first.embeddings)


def test_disk_cache_can_be_turned_off(hash_encoder, tmp_path, monkeypatch):
    build_index(_corpus(tag="x"), hash_encoder, disk_cache=False)
    monkeypatch.setenv("DSPEX_RETRIEVAL_DISK_CACHE", "false")
    build_index(_corpus(tag="y"), hash_encoder)
    assert _index_files(tmp_path) == []


def test_an_unwritable_cache_folder_is_logged_not_fatal(hash_encoder, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the home folder should be")
    monkeypatch.setenv("DSPEX_HOME", str(blocker))
    with caplog.at_level(logging.WARNING, logger="tasks.retrieval.index"):
        index = build_index(_corpus(), hash_encoder)
    assert index.embeddings.shape == (20, 8)
    assert "kept in memory only" in caplog.text


def test_the_lru_keeps_the_configured_number_of_indexes(hash_encoder, monkeypatch):
    monkeypatch.setenv("DSPEX_RETRIEVAL_INDEX_CACHE_SIZE", "1")
    monkeypatch.setenv("DSPEX_RETRIEVAL_DISK_CACHE", "false")
    build_index(_corpus(tag="a"), hash_encoder)
    build_index(_corpus(tag="b"), hash_encoder)
    build_index(_corpus(tag="b"), hash_encoder)
    build_index(_corpus(tag="a"), hash_encoder)  # evicted by b: encoded again
    assert hash_encoder.calls == [20, 20, 20]
    assert index_cache_stats().size == 1


def test_concurrent_builds_of_one_corpus_encode_it_once(hash_encoder):
    barrier = threading.Barrier(8)
    results = []

    def build():
        barrier.wait()
        results.append(build_index(_corpus(), hash_encoder))

    threads = [threading.Thread(target=build) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert hash_encoder.calls == [20]
    assert len({id(index) for index in results}) == 1


def test_embeddings_are_read_only(hash_encoder):
    index = build_index(_corpus(), hash_encoder)
    with pytest.raises(ValueError, match="read-only"):
        index.embeddings[0, 0] = 1.0


def test_an_embedder_returning_the_wrong_shape_is_an_error():
    class Broken:
        model_id = "test/broken"
        dimension = 8

        def encode(self, texts, *, batch_size=None):
            return np.zeros((1, 8), dtype=np.float32)

    with pytest.raises(RetrievalError, match=r"shape \(1, 8\) for a corpus of shape \(20, 8\)"):
        build_index(_corpus(), Broken())


@pytest.mark.parametrize("budget", [None, 1], ids=["one-block", "chunked"])
def test_search_is_exact_top_k_best_first(budget, hash_encoder, monkeypatch):
    if budget is not None:  # force one query per score block
        monkeypatch.setattr("tasks.retrieval.index._SCORE_BUDGET_BYTES", budget)
    index = build_index(_corpus(n=50), hash_encoder)
    queries = hash_encoder.inner.encode(["q1", "q2", "q3"])
    indices, scores = index.search(queries, 5)
    full = queries @ index.embeddings.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_search_breaks_ties_by_corpus_position():
    class Constant:
        model_id = "test/constant"
        dimension = 2

        def encode(self, texts, *, batch_size=None):
            return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))

    index = build_index(_corpus(n=10), Constant())
    indices, _ = index.search(np.array([[1.0, 0.0]], dtype=np.float32), 4)
    assert indices.tolist() == [[0, 1, 2, 3]]


def test_search_with_k_above_the_corpus_size_returns_everything(hash_encoder):
    index = build_index(_corpus(n=4), hash_encoder)
    indices, scores = index.search(hash_encoder.inner.encode(["q"]), 10)
    assert indices.shape == scores.shape == (1, 4)
    assert sorted(indices[0].tolist()) == [0, 1, 2, 3]


def test_search_rejects_bad_arguments(hash_encoder):
    index = build_index(_corpus(), hash_encoder)
    with pytest.raises(RetrievalError, match="k must be"):
        index.search(hash_encoder.inner.encode(["q"]), 0)
    with pytest.raises(RetrievalError, match=r"shape \(q, 8\)"):
        index.search(np.zeros((1, 5), dtype=np.float32), 3)
