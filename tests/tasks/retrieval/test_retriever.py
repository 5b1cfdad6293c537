import copy

import dspy
import pyarrow as pa
import pytest
from pydantic import ValidationError

from dspex.exceptions import RetrievalError
from tasks.retrieval import EmbeddingRetriever, Passage, load_demo_corpus, load_demo_questions
from tasks.retrieval.index import clear_index_cache, index_cache_stats


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    # One DSPEX_HOME for the module, so the demo corpus is encoded once and then read from the disk
    # cache (each test starts with an empty in-process cache).
    return tmp_path_factory.mktemp("demo-home")


@pytest.fixture
def demo(counting_minilm, demo_home, monkeypatch):
    monkeypatch.setenv("DSPEX_HOME", str(demo_home))
    retriever = EmbeddingRetriever(load_demo_corpus(), k=3, embedder=counting_minilm)
    counting_minilm.calls.clear()
    return retriever


def _recall(retriever, questions, k):
    results = retriever.search([q["question"] for q in questions], k=k)
    return sum(q["passage_id"] in [p.id for p in ranked] for q, ranked in zip(questions, results)) / len(
        questions
    )


def test_demo_questions_find_their_gold_passage(demo):
    questions = load_demo_questions()
    # Measured: recall@1 = recall@3 = 1.0 on the 40 demo questions (89 passages).
    assert _recall(demo, questions, 1) >= 0.9
    assert _recall(demo, questions, 3) >= 0.95


def test_results_are_passages_best_first(demo):
    passages = demo.retrieve("Who created the Python programming language?")
    assert len(passages) == 3
    assert passages[0].title == "Python language"
    assert passages[0].id == "p063"
    assert "Guido van Rossum" in passages[0].text
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)
    assert 0.0 < passages[0].score <= 1.0
    assert demo.retrieve("Who created the Python programming language?", k=1) == passages[:1]


def test_search_batches_queries_into_one_encode_call(demo, counting_minilm):
    counting_minilm.calls.clear()
    results = demo.search(["Where is Lake Baikal?", "Who built the Rocket locomotive?", "What is lava?"], k=2)
    assert [len(r) for r in results] == [2, 2, 2]
    assert counting_minilm.calls == [3]
    assert demo.search([]) == []


def test_a_second_retriever_over_the_same_corpus_does_not_re_encode(counting_minilm):
    rows = load_demo_corpus()[:12]
    first = EmbeddingRetriever(rows, embedder=counting_minilm)
    assert counting_minilm.calls == [12]
    table = pa.table({key: [row[key] for row in rows] for key in ("id", "title", "text")})
    again = EmbeddingRetriever(table, embedder=counting_minilm)  # same content, another form
    assert again.index is first.index
    assert counting_minilm.calls == [12]


def test_the_disk_cache_serves_a_fresh_process(counting_minilm):
    rows = load_demo_corpus()[:12]
    before = EmbeddingRetriever(rows, embedder=counting_minilm).retrieve("What is the capital of Australia?")
    clear_index_cache()  # what a new worker process sees
    reloaded = EmbeddingRetriever(rows, embedder=counting_minilm)
    assert index_cache_stats().disk_hits == 1
    after = reloaded.retrieve("What is the capital of Australia?")
    assert counting_minilm.calls == [12, 1, 1]  # the corpus once, then one query per retrieve
    assert after == before


def test_the_default_embedder_is_the_process_model(minilm):
    retriever = EmbeddingRetriever(["The Moon orbits the Earth.", "Bees make honey."], k=1)
    assert retriever.embedder is minilm
    assert retriever.retrieve("What orbits the Earth?")[0].id == "0"


def test_k_larger_than_the_corpus_returns_the_whole_corpus(minilm):
    retriever = EmbeddingRetriever(["a cat", "a dog"], embedder=minilm)
    assert len(retriever.retrieve("pets", k=10)) == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.retrieve(None), "query must be a string, got NoneType"),
        (lambda r: r.retrieve(42), "query must be a string, got int"),
        (lambda r: r.retrieve("  "), "query is blank"),
        (lambda r: r.retrieve("ok", k=0), "k must be an integer >= 1"),
        (lambda r: r.search("not a list"), "use retrieve"),
        (lambda r: r.search(["ok", b"bytes"]), "query 1 must be a string, got bytes"),
        (lambda r: r.search(["ok"], k=-2), "k must be an integer >= 1"),
    ],
)
def test_bad_queries_and_k_are_typed_errors(demo, call, message):
    with pytest.raises(RetrievalError, match=message):
        call(demo)


def test_bad_construction_is_a_typed_error(minilm):
    with pytest.raises(RetrievalError, match="the corpus is empty"):
        EmbeddingRetriever([], embedder=minilm)
    with pytest.raises(RetrievalError, match="k must be"):
        EmbeddingRetriever(["x"], k=0, embedder=minilm)


def test_passages_are_frozen_records():
    passage = Passage(id="1", text="t", score=0.5)
    assert passage.title == "" and passage.long_text == "t"
    with pytest.raises(ValidationError):
        passage.text = "changed"
    with pytest.raises(ValidationError):
        Passage(id="1", text="t", score=0.5, extra="no")


def test_deep_copies_share_the_retriever(demo):
    assert copy.deepcopy(demo) is demo


def test_it_is_a_dspy_retrieval_model(demo):
    with dspy.context(rm=demo):
        prediction = dspy.Retrieve(k=2)("Which computer defeated Garry Kasparov?")
    assert len(prediction.passages) == 2
    assert "Deep Blue" in prediction.passages[0]
