"""Retrieval benchmark: our encode throughput against sentence-transformers called directly.

Both sides embed the same texts (the demo corpus repeated) with the same model object, batch size and
device, interleaved within one run; each side is warmed up first. Throughputs are medians over the
repeats; the ratio is the median of the per-repeat ratios (each repeat times both sides back to back,
so a busy shared machine slows both alike). Also prints the corpus index build (cold, in-memory hit, disk reload) and query latency.

    .venv/bin/python benchmarks/retrieval.py            # 256 texts, 9 interleaved pairs
    .venv/bin/python benchmarks/retrieval.py --quick    # 64 texts, 7 interleaved pairs
    .venv/bin/python benchmarks/retrieval.py --size 2000 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

TARGET_RATIO = 0.9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 texts and 7 repeats instead of 256 and 9")
    parser.add_argument("--size", type=int, default=None, help="number of texts to encode")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (median reported)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: DSPEX_EMBEDDING_BATCH_SIZE")
    parser.add_argument("--device", default=None, help="default: DSPEX_EMBEDDING_DEVICE (auto)")
    args = parser.parse_args()
    size = args.size or (64 if args.quick else 256)
    repeats = args.repeats or (7 if args.quick else 9)

    # A private DSPEX_HOME: the benchmark must not read or leave index files in the project.
    home = tempfile.mkdtemp(prefix="dspex-bench-retrieval-")
    os.environ["DSPEX_HOME"] = home

    import torch

    from dspex.settings import get_settings
    from tasks.retrieval import (
        EmbeddingRetriever,
        clear_index_cache,
        get_embedder,
        load_demo_corpus,
        load_demo_questions,
        to_corpus,
    )

    batch_size = args.batch_size or get_settings().embedding_batch_size
    load_seconds = _timed(lambda: get_embedder(args.device))
    embedder = get_embedder(args.device)
    model = embedder.model
    demo_texts = to_corpus(load_demo_corpus()).embedding_texts()
    texts = (demo_texts * (size // len(demo_texts) + 1))[:size]

    def ours() -> object:
        return embedder.encode(texts, batch_size=batch_size)

    def reference() -> object:
        return model.encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )

    warm = texts[: 2 * batch_size]
    embedder.encode(warm, batch_size=batch_size)
    model.encode(warm, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    ours_times: list[float] = []
    reference_times: list[float] = []
    for repeat in range(repeats):
        # Alternate which side goes first so drift on a shared machine hits both alike.
        pair = [(ours, ours_times), (reference, reference_times)]
        for fn, sink in pair if repeat % 2 == 0 else reversed(pair):
            sink.append(_timed(fn))
    ours_rate = size / statistics.median(ours_times)
    reference_rate = size / statistics.median(reference_times)
    ratio = statistics.median(r / o for o, r in zip(ours_times, reference_times, strict=True))

    # Index build and query latency on the demo corpus.
    corpus = load_demo_corpus()
    questions = [q["question"] for q in load_demo_questions()]
    clear_index_cache()
    cold = _timed(lambda: EmbeddingRetriever(corpus, disk_cache=True, embedder=embedder))
    memory_hit = _timed(lambda: EmbeddingRetriever(corpus, embedder=embedder))
    clear_index_cache()
    disk_hit = _timed(lambda: EmbeddingRetriever(corpus, disk_cache=True, embedder=embedder))
    retriever = EmbeddingRetriever(corpus, k=3, embedder=embedder)
    retriever.retrieve(questions[0])
    single = [_timed(lambda q=q: retriever.retrieve(q)) for q in questions]
    batched = _timed(lambda: retriever.search(questions))

    print(
        f"device={embedder.device}  torch threads={torch.get_num_threads()}  texts={size}  "
        f"batch size={batch_size}  repeats={repeats}  model load={load_seconds:.1f} s"
    )
    print()
    print(f"{'encode throughput':<44}{'texts/s':>12}")
    print(f"{'  ours: tasks.retrieval Embedder.encode':<44}{ours_rate:>12.1f}")
    print(f"{'  reference: SentenceTransformer.encode':<44}{reference_rate:>12.1f}")
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(
        f"{'  ratio ours / reference (median of pairs)':<44}{ratio:>11.3f}x   target >= {TARGET_RATIO}x  {verdict}"
    )
    print()
    print(f"{f'demo corpus index ({len(corpus)} passages)':<44}{'ms':>12}")
    print(f"{'  cold build (encode + write .npy)':<44}{cold * 1e3:>12.1f}")
    print(f"{'  in-memory cache hit':<44}{memory_hit * 1e3:>12.2f}")
    print(f"{'  disk cache reload (new process)':<44}{disk_hit * 1e3:>12.2f}")
    print(f"{f'query latency ({len(questions)} questions, k=3)':<44}{'ms':>12}")
    print(f"{'  one query, p50':<44}{statistics.median(single) * 1e3:>12.1f}")
    print(f"{'  one query, max':<44}{max(single) * 1e3:>12.1f}")
    print(f"{'  batched search, per query':<44}{batched / len(questions) * 1e3:>12.1f}")


if __name__ == "__main__":
    main()
