import pyarrow as pa
import pytest

from dspex.exceptions import RetrievalError
from tasks.retrieval.inputs import Corpus, check_k, check_queries, to_corpus


def test_a_list_of_strings_gets_row_numbers_as_ids():
    corpus = to_corpus(["alpha", "beta"])
    assert corpus.ids == ("0", "1")
    assert corpus.titles == ("", "")
    assert corpus.texts == ("alpha", "beta")
    assert corpus.embedding_texts() == ["alpha", "beta"]


def test_mappings_and_a_table_with_the_same_content_give_the_same_hash():
    rows = [{"id": "a", "title": "A", "text": "one", "extra": 1}, {"id": 7, "text": "two"}]
    from_rows = to_corpus(rows)
    table = pa.table({"id": ["a", "7"], "title": ["A", None], "text": ["one", "two"]})
    from_table = to_corpus(table)
    assert from_rows.ids == from_table.ids == ("a", "7")
    assert from_rows.titles == from_table.titles == ("A", "")
    assert from_rows.content_hash == from_table.content_hash
    assert from_rows.embedding_texts() == ["A: one", "two"]


def test_the_hash_changes_with_any_field_and_is_unambiguous():
    base = to_corpus([{"id": "1", "title": "t", "text": "x"}])
    assert base.content_hash != to_corpus([{"id": "2", "title": "t", "text": "x"}]).content_hash
    assert base.content_hash != to_corpus([{"id": "1", "title": "u", "text": "x"}]).content_hash
    assert base.content_hash != to_corpus([{"id": "1", "title": "t", "text": "y"}]).content_hash
    # Same concatenation, different split between rows.
    assert to_corpus(["ab", "c"]).content_hash != to_corpus(["a", "bc"]).content_hash


def test_a_corpus_passes_through():
    corpus = to_corpus(["x"])
    assert to_corpus(corpus) is corpus
    assert isinstance(corpus, Corpus) and len(corpus) == 1


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ([], "the corpus is empty"),
        (pa.table({"text": pa.array([], pa.string())}), "the corpus is empty"),
        ("one long string", "must be a list of strings"),
        (42, "got int"),
        (["ok", 3], "corpus row 1: expected a string like row 0, got int"),
        ([{"text": "ok"}, "x"], "corpus row 1: expected a mapping with 'text' like row 0, got str"),
        ([3.5], "corpus row 0: expected a string or a mapping with 'text', got float"),
        ([{"title": "no text"}], "corpus row 0: a mapping needs a 'text' key"),
        ([{"text": "   "}], "corpus row 0: 'text' is blank"),
        ([{"text": None}], "corpus row 0: 'text' must be a string"),
        ([{"text": "x", "title": 5}], "corpus row 0: 'title' must be a string"),
        ([{"text": "x", "id": True}], "corpus row 0: 'id' must be a string or an integer"),
        ([{"text": "x", "id": "a"}, {"text": "y", "id": "a"}], "'a' appears more than once"),
        (pa.table({"body": ["x"]}), "needs a 'text' column"),
    ],
)
def test_bad_corpora_are_rejected_with_the_row(corpus, message):
    with pytest.raises(RetrievalError, match=message) as caught:
        to_corpus(corpus)
    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "retrieval_error"


@pytest.mark.parametrize("k", [0, -1, 1.5, "3", True, None])
def test_bad_k_is_rejected(k):
    with pytest.raises(RetrievalError, match="k must be an integer >= 1"):
        check_k(k)


def test_check_queries():
    assert check_queries(("a", "b")) == ["a", "b"]
    assert check_queries([]) == []
    with pytest.raises(RetrievalError, match="use retrieve"):
        check_queries("one query")
    with pytest.raises(RetrievalError, match="query 1 must be a string, got NoneType"):
        check_queries(["a", None])
    with pytest.raises(RetrievalError, match="query 0 is blank"):
        check_queries([" "])
