"""ColBERTv2 pass-through, against a real HTTP server on loopback that speaks ColBERTv2's API."""

import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import dspy
import pytest

from dspex.exceptions import RetrievalError, RetrieverServerError, is_retryable
from tasks.retrieval import ColBERTv2Retriever, Passage

DOCS = [
    "Khartoum | The Blue Nile and the White Nile meet at Khartoum.",
    "Honeybees | Honeybees dance to show where food is.",
    "Moon | Neil Armstrong walked on the Moon in 1969.",
    "Everest | Mount Everest rises 8,849 metres.",
]


class ColBERTServer:
    """Answers like a ColBERTv2 server: GET ?query=&k= or POST {"query", "k"} -> {"topk": [...]}."""

    def __init__(self):
        self.mode = "ok"
        self.requests: list[tuple[str, str, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                params = parse_qs(urlparse(self.path).query)
                self._answer("GET", params["query"][0], int(params["k"][0]))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._answer("POST", body["query"], int(body["k"]))

            def _answer(self, method, query, k):
                server.requests.append((method, query, k))
                status, payload = server.reply(query, k)
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/search"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reply(self, query, k):
        if self.mode == "ok":
            # Rank by words shared with the query, like a (very) small search engine.
            words = set(query.lower().split())
            ranked = sorted(range(len(DOCS)), key=lambda i: -len(words & set(DOCS[i].lower().split())))
            topk = [
                {"text": DOCS[i], "pid": i, "rank": r + 1, "score": 30.0 - r, "prob": 0.5 / (r + 1)}
                for r, i in enumerate(ranked[:k])
            ]
            return 200, {"query": query, "topk": topk, "latency": 1.0}
        return {
            "500": (500, {"detail": "boom"}),
            "429": (429, {"detail": "slow down"}),
            "400": (400, {"detail": "bad query"}),
            "error": (200, {"error": True, "message": "index not loaded"}),
            "no-topk": (200, {"query": query}),
            "not-json": (200, b"<html>oops</html>"),
            "no-text": (200, {"topk": [{"pid": 1, "score": 1.0}]}),
        }[self.mode]


@pytest.fixture
def server():
    colbert = ColBERTServer()
    colbert.thread.start()
    yield colbert
    colbert.httpd.shutdown()
    colbert.httpd.server_close()


def _query(text):
    # DSPy caches ColBERTv2 answers by url and query; a unique query keeps tests independent.
    return f"{text} {uuid.uuid4().hex}"


@pytest.mark.parametrize("post", [False, True], ids=["GET", "POST"])
def test_passages_come_back_best_first(server, post):
    retriever = ColBERTv2Retriever(server.url, post_requests=post, k=2)
    passages = retriever.retrieve(_query("where do the blue nile and white nile meet"))
    assert [p.id for p in passages] == ["0", "1"]
    assert passages[0] == Passage(id="0", title="", text=DOCS[0], score=30.0)
    assert passages[1].score == 29.0
    assert server.requests[-1][0] == ("POST" if post else "GET")
    assert server.requests[-1][2] == 2


def test_search_sends_one_request_per_query(server):
    retriever = ColBERTv2Retriever(server.url)
    results = retriever.search([_query("moon armstrong"), _query("everest metres")], k=1)
    assert [r[0].id for r in results] == ["2", "3"]
    assert len(server.requests) == 2


def test_answers_are_served_from_dspys_cache_the_second_time(server):
    retriever = ColBERTv2Retriever(server.url)
    query = _query("honeybees dance")
    assert retriever.retrieve(query) == retriever.retrieve(query)
    assert len(server.requests) == 1


def test_it_works_as_a_dspy_retrieve_module_and_rm(server):
    retriever = ColBERTv2Retriever(server.url, k=1)
    prediction = retriever.as_dspy()(_query("moon armstrong walked"))
    assert prediction.passages == [DOCS[2]]
    assert prediction.passage_ids == ["2"]
    with dspy.context(rm=retriever):
        assert dspy.Retrieve(k=1)(_query("everest metres")).passages == [DOCS[3]]


def test_port_is_appended_like_dspy_does():
    assert ColBERTv2Retriever("http://127.0.0.1", port=8893).url == "http://127.0.0.1:8893"


@pytest.mark.parametrize(
    ("mode", "retryable", "status", "message"),
    [
        ("500", True, 500, "HTTP 500"),
        ("429", True, 429, "HTTP 429"),
        ("400", False, 400, "HTTP 400"),
        ("error", False, None, "index not loaded"),
        ("no-topk", False, None, "unexpected response"),
        ("not-json", False, None, "not JSON"),
        ("no-text", False, None, "unusable answer"),
    ],
)
def test_server_failures_are_typed_and_say_whether_to_retry(server, mode, retryable, status, message):
    server.mode = mode
    with pytest.raises(RetrieverServerError, match=message) as caught:
        ColBERTv2Retriever(server.url).retrieve(_query("anything"))
    error = caught.value
    assert error.retryable is retryable and is_retryable(error) is retryable
    assert error.status == status
    assert error.url == server.url and server.url in str(error)


def test_post_answers_without_text_are_malformed(server):
    server.mode = "no-text"
    with pytest.raises(RetrieverServerError, match="topk item 0 has no text"):
        ColBERTv2Retriever(server.url, post_requests=True).retrieve(_query("anything"))


def test_an_unreachable_server_is_retryable():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RetrieverServerError, match="unreachable") as caught:
        ColBERTv2Retriever(f"http://127.0.0.1:{port}").retrieve(_query("anything"))
    assert caught.value.retryable


def test_bad_input_is_rejected_before_any_request(server):
    retriever = ColBERTv2Retriever(server.url)
    with pytest.raises(RetrievalError, match="more than ColBERTv2's GET API serves"):
        retriever.retrieve("q", k=101)
    with pytest.raises(RetrievalError, match="query is blank"):
        retriever.retrieve(" ")
    with pytest.raises(RetrievalError, match="query must be a string"):
        retriever.retrieve(["q"])
    with pytest.raises(RetrievalError, match="k must be"):
        retriever.retrieve("q", k=0)
    with pytest.raises(RetrievalError, match="use retrieve"):
        retriever.search("q")
    with pytest.raises(RetrievalError, match="must start with http"):
        ColBERTv2Retriever("ftp://example")
    assert server.requests == []
