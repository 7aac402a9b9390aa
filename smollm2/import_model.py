"""`smollm2 import`: turn a GGUF file or a Hugging Face Llama folder into a Hugging Face folder of ours.

The output (config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json) loads in transformers and in `smollm2.weights.load_model`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from smollm2.errors import UserError

# What transformers writes for a tokenizer; copied as they are from an HF source folder.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="HF_DIR|GGUF",
        help="a transformers LlamaForCausalLM folder or a llama .gguf file",
    )
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="folder to write (created if needed)")
    parser.add_argument(
        "--max-shard-size",
        default=None,
        help='split the weights into shards of at most this size, e.g. "2GB" (default: one file)',
    )


def run(args: argparse.Namespace) -> int:
    from smollm2 import hf
    from smollm2.atomic import write_atomic

    source, out = Path(args.model), Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.resolve() == source.resolve():
        raise UserError(f"--out {out}: is the source folder; choose another one")
    if source.is_file() and source.suffix.lower() == ".gguf":
        _import_gguf(source, out, args.max_shard_size)
    elif hf.is_hf_folder(source):
        model = hf.load_hf_folder(source)
        hf.save_hf_folder(model, out, max_shard_size=args.max_shard_size)
        for name in HF_TOKENIZER_FILES:
            if (source / name).is_file():
                write_atomic(out / name, lambda tmp, src=source / name: shutil.copyfile(src, tmp))
    elif not source.exists():
        raise UserError(f"--model {source}: no such file or directory")
    else:
        raise UserError(f"--model {source}: not a model (expected a folder with config.json or a .gguf file)")
    print(f"[smollm2 import] wrote {out}", file=sys.stderr)
    return 0


def _import_gguf(source: Path, out: Path, max_shard_size: str | None) -> None:
    from smollm2.gguf import GGUFFile
    from smollm2.hf import model_from_state_dict, save_hf_folder, save_hf_tokenizer

    gguf_file = GGUFFile(source)
    config = gguf_file.config()
    model = model_from_state_dict(config, gguf_file.state_dict(config), str(source))
    tokenizer = gguf_file.tokenizer()
    special = gguf_file.special_tokens()
    save_hf_folder(model, out, max_shard_size=max_shard_size)
    save_hf_tokenizer(
        tokenizer,
        out,
        bos_token=tokenizer.id_to_token(config.bos_token_id),
        eos_token=tokenizer.id_to_token(config.eos_token_id),
        chat_template=special["chat_template"],
        unk_token=special["unk_token"],
        pad_token=special["pad_token"],
    )
