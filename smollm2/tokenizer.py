"""`smollm2 tokenizer train|extract`, and the tokenizer helpers the rest of smollm2 uses.

`train` builds a byte-level BPE like the cosmo2 tokenizer SmolLM2 was trained with: GPT-2 style byte-level
pre-tokenization with every digit its own token, `<|endoftext|>` = id 0 as bos/eos/unk, the 17 SmolLM2
special tokens at ids 0-16, no normalizer and no added bos/eos (`prepare` appends EOS to each document).
`extract` writes the real SmolLM2 tokenizer stored in a GGUF file. Both save DIR/tokenizer.json plus a
DIR/tokenizer_config.json, which is what `transformers.AutoTokenizer.from_pretrained(DIR)` needs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from smollm2.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# ids 0-16 of SmolLM2's tokenizer (HuggingFaceTB/cosmo2-tokenizer), in order.
SMOLLM2_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
]
# The token that ends a document in pretraining data, first match wins. SmolLM2 (and GPT-2) use
# <|endoftext|>; an Instruct tokenizer's eos (<|im_end|>) ends a chat turn, not a document.
END_OF_DOCUMENT_TOKENS = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"]
# Parts of tokenizer.json that decide which ids a text becomes; decoder, post-processor, padding and
# truncation settings do not change the ids of a token file, so they stay out of the fingerprint.
_FINGERPRINT_KEYS = ("added_tokens", "normalizer", "pre_tokenizer", "model")


def tokenizer_file(path: str | Path) -> Path:
    """FILE itself, or DIR/tokenizer.json."""
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a folder holding one."""
    from tokenizers import Tokenizer

    file = tokenizer_file(path)
    if not file.is_file():
        raise UserError(f"{file}: no such tokenizer file (expected a tokenizer.json or a folder holding one)")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for any parse error
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{file}: not a valid tokenizer.json: {reason}") from None


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON: the parts that decide the ids, keys sorted, unset fields dropped.

    null and "" both mean "not set" in tokenizer.json (transformers' GGUF conversion writes
    continuing_subword_prefix "" where `tokenizers` writes null): dropping them lets the same tokenizer,
    saved by different tools, keep one fingerprint.
    """

    def drop_unset(pairs):
        return {k: v for k, v in pairs if v is not None and v != ""}

    full = json.loads(tok.to_str(), object_pairs_hook=drop_unset)
    text = json.dumps(
        {k: full[k] for k in _FINGERPRINT_KEYS if k in full}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def eos_token_id(tok: Tokenizer) -> int:
    """The id that `prepare` appends after every document."""
    for token in END_OF_DOCUMENT_TOKENS:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    raise UserError(f"tokenizer has no end-of-document token (looked for {', '.join(END_OF_DOCUMENT_TOKENS)})")


def build_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 49152, min_frequency: int = 0, show_progress: bool = False
) -> Tokenizer:
    """Train a SmolLM2-style byte-level BPE on an iterable of strings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
        special_tokens=SMOLLM2_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def _train(args: argparse.Namespace) -> None:
    from smollm2.corpus import open_sources, read_documents
    from smollm2.hf import save_hf_tokenizer

    start = time.perf_counter()
    num_bytes = 0

    def texts(sources):
        nonlocal num_bytes
        for batch in read_documents(sources):
            num_bytes += sum(len(t.encode("utf-8")) for t in batch)
            yield from batch

    with tempfile.TemporaryDirectory(prefix="smollm2-tokenizer-") as cache:  # datasets' lock files
        sources = open_sources(args.input, text_field=args.text_field, txt_mode=args.txt_mode, cache_dir=cache)
        tok = build_bpe_tokenizer(
            texts(sources), args.vocab_size, args.min_frequency, show_progress=sys.stderr.isatty()
        )
    save_hf_tokenizer(tok, args.out, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    seconds = time.perf_counter() - start
    short = (
        ""
        if tok.get_vocab_size() == args.vocab_size
        else (
            f" of {args.vocab_size} requested (the corpus has no more merges;"
            " a bigger corpus or a lower --min-frequency gives more)"
        )
    )
    print(
        f"tokenizer train: vocab {tok.get_vocab_size()}{short}, {num_bytes / 1e6:.2f} MB of text in {seconds:.1f} s"
        f" -> {Path(args.out) / 'tokenizer.json'}"
    )


def extract_tokenizer(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write the tokenizer of a GGUF model file (and its bos/eos/unk/pad and chat template) to out_dir."""
    from smollm2.gguf import GGUFFile
    from smollm2.hf import save_hf_tokenizer

    gguf = GGUFFile(gguf_path)
    save_hf_tokenizer(gguf.tokenizer(), out_dir, **gguf.special_tokens())
    return Path(out_dir) / "tokenizer.json"


def _extract(args: argparse.Namespace) -> None:
    out = extract_tokenizer(args.gguf, args.out)
    print(f"tokenizer extract: vocab {load_tokenizer(out).get_vocab_size()} from {args.gguf} -> {out}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_verb", metavar="SUBVERB", required=True)
    train = sub.add_parser("train", help="train a byte-level BPE tokenizer (SmolLM2 special tokens, <|endoftext|> = 0)")
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text files, or anything `smollm2 prepare` reads (jsonl/json/parquet, folders, globs, datasets)",
    )
    train.add_argument(
        "--out", required=True, metavar="DIR", help="writes DIR/tokenizer.json and DIR/tokenizer_config.json"
    )
    train.add_argument("--vocab-size", type=int, default=49152)
    train.add_argument("--min-frequency", type=int, default=0, help="merges seen fewer times are not learned")
    train.add_argument("--text-field", default="text", help="column holding the text in jsonl/json/parquet/datasets")
    train.add_argument(
        "--txt-mode",
        choices=["file", "paragraph"],
        default="file",
        help=".txt files: one document per file, or per blank-line-separated paragraph",
    )
    extract = sub.add_parser("extract", help="write the tokenizer stored in a GGUF model file")
    extract.add_argument("--gguf", required=True, metavar="FILE")
    extract.add_argument("--out", required=True, metavar="DIR")


def run(args: argparse.Namespace) -> None:
    if args.tokenizer_verb == "train":
        specials = len(SMOLLM2_SPECIAL_TOKENS)
        if args.vocab_size < 256 + specials:
            raise UserError(
                f"--vocab-size {args.vocab_size}: a byte-level BPE needs at least {256 + specials}"
                f" (256 bytes + {specials} special tokens)"
            )
        _train(args)
    else:
        _extract(args)
