import dspy
import pytest
from dspy.utils import DummyLM

from dspex.exceptions import RetrievalError
from tasks.retrieval import DSPyRetrieve, EmbeddingRetriever

PASSAGES = [
    {"id": "moon", "title": "The Moon", "text": "Neil Armstrong walked on the Moon in 1969."},
    {
        "id": "bees",
        "title": "Honeybees",
        "text": "Honeybees tell each other where food is with a waggle dance.",
    },
    {"id": "nile", "title": "Nile", "text": "The Blue Nile and the White Nile meet at Khartoum."},
]


@pytest.fixture
def retriever(minilm):
    return EmbeddingRetriever(PASSAGES, k=2, embedder=minilm)


class RAG(dspy.Module):
    def __init__(self, retriever):
        super().__init__()
        self.retrieve = retriever.as_dspy(k=1)
        self.answer = dspy.ChainOfThought("context: list[str], question -> answer")

    def forward(self, question):
        context = self.retrieve(question).passages
        return self.answer(context=context, question=question)


def test_the_module_returns_a_prediction_with_aligned_fields(retriever):
    prediction = retriever.as_dspy()("Where do the two Niles meet?")
    assert isinstance(prediction, dspy.Prediction)
    assert prediction.passage_ids[0] == "nile"
    assert prediction.passages[0] == PASSAGES[2]["text"]
    assert prediction.titles[0] == "Nile"
    assert len(prediction.passages) == len(prediction.scores) == 2
    assert len(retriever.as_dspy()("dance", k=1).passages) == 1


def test_it_works_inside_a_dspy_program(retriever):
    lm = DummyLM([{"reasoning": "The context says so.", "answer": "Khartoum"}])
    program = RAG(retriever)
    with dspy.context(lm=lm):
        result = program(question="Where do the Blue Nile and the White Nile meet?")
    assert result.answer == "Khartoum"
    prompt = str(lm.history[-1]["messages"])
    assert "meet at Khartoum" in prompt  # the retrieved passage reached the LM
    assert "waggle dance" not in prompt  # k=1: only the best passage


def test_programs_copy_save_and_load_like_with_dspy_retrieve(retriever):
    program = RAG(retriever)
    copied = program.deepcopy()
    assert copied.retrieve is not program.retrieve
    assert copied.retrieve.retriever is retriever  # the index is shared, never copied
    state = program.dump_state()
    assert state["retrieve"] == {"k": 1}
    state["retrieve"] = {"k": 2}
    copied.load_state(state)
    assert copied.retrieve.k == 2
    assert isinstance(program.retrieve, dspy.Retrieve)
    # Optimizers look for predictors; the retriever is not one.
    assert [name for name, _ in program.named_predictors()] == ["answer.predict"]


def test_a_program_holding_it_saves_to_json_and_loads(retriever, tmp_path):
    # dspy.Retrieve itself cannot be saved by dspy 3.4 (its dump_state lacks json_mode).
    program = RAG(retriever)
    program.retrieve.k = 2
    path = tmp_path / "rag.json"
    program.save(str(path))
    fresh = RAG(retriever)
    fresh.load(str(path))
    assert fresh.retrieve.k == 2


def test_a_state_cannot_replace_the_retriever(retriever):
    module = retriever.as_dspy()
    with pytest.raises(RetrievalError, match="holds only 'k'"):
        module.load_state({"k": 2, "retriever": "evil"})
    with pytest.raises(RetrievalError, match=r"state\['k'\] must be"):
        module.load_state({"k": 0})
    assert module.retriever is retriever and module.k == 2


def test_bad_arguments_are_typed_errors(retriever):
    with pytest.raises(RetrievalError, match="needs a retriever with retrieve"):
        DSPyRetrieve(object())
    with pytest.raises(RetrievalError, match="k must be"):
        DSPyRetrieve(retriever, k=0)
    with pytest.raises(RetrievalError, match="query must be a string"):
        retriever.as_dspy()(None)
