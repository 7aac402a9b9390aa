"""`smollm2 <verb> ...`: one argparse front end; each verb lives in its own module.

A verb's module defines `add_arguments(parser)` and `run(args) -> int | None`. Modules are imported
only for the verb being run, so `smollm2 prepare` never pays for importing DeepSpeed.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from smollm2.errors import RunFailed, UserError, write_failed

# A full disk or quota, a read-only file system, a folder we may not write, a file where a folder should be.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}

# verb -> (module, one-line help). "tokenizer" and "tasks" have sub-verbs of their own, handled by their modules.
VERBS = {
    "tokenizer": ("smollm2.tokenizer", "train a byte-level BPE tokenizer, or extract one from a GGUF file"),
    "prepare": ("smollm2.prepare", "tokenize a corpus into packed train/val token files"),
    "train": ("smollm2.train", "train a model with DeepSpeed (under any launcher)"),
    "eval": ("smollm2.evaluate", "val loss, samples and multiple-choice tasks of a checkpoint; --watch a run"),
    "tasks": ("smollm2.tasks", "build the next-line multiple-choice task from a prepared corpus's held-out text"),
    "generate": ("smollm2.generate", "generate text from a run, a Hugging Face folder or a GGUF file"),
    "export": ("smollm2.export", "write a Hugging Face folder from a training checkpoint"),
    "checkpoints": ("smollm2.checkpoint", "list a run's checkpoints and whether each is complete and intact"),
    "import": ("smollm2.import_model", "convert a Hugging Face folder or GGUF file to a Hugging Face folder"),
    "bench": ("smollm2.bench", "time the training step and compare with a transformers baseline"),
}


def build_parser(verb: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smollm2", description="Pretrain SmolLM2-class language models on DeepSpeed.")
    # The deepspeed launcher passes --local_rank=N before our own arguments (unless --no_local_rank);
    # the same number is in $LOCAL_RANK, which smollm2.distributed reads.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, (module, help_) in VERBS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == verb:  # only the chosen verb's module is imported to define its flags
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-") and a in VERBS), None)
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    module = importlib.import_module(VERBS[args.verb][0])
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"smollm2 {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"smollm2 {args.verb}: stopped: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        # A write the verb did not expect to fail (metrics, samples, an export): the file and why, in one line.
        print(f"smollm2 {args.verb}: error: {write_failed(exc.filename or '.', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smollm2 {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
