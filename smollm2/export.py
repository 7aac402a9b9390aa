"""`smollm2 export --checkpoint RUN_DIR_OR_CKPT --out HF_DIR`: a transformers folder from a checkpoint.

Works for every ZeRO stage (smollm2.weights.load_run_model): the weights go out in fp32 through
smollm2.hf.save_hf_folder, the run's tokenizer through save_hf_tokenizer. The folder is written under a
temporary name and renamed at the end, so HF_DIR is either complete or absent.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_DIR_OR_CKPT",
        help="a run directory (its latest checkpoint) or one checkpoint folder",
    )
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="new folder for the Hugging Face model")


def export(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    from smollm2.atomic import write_atomic
    from smollm2.errors import UserError
    from smollm2.hf import save_hf_folder, save_hf_tokenizer
    from smollm2.tokenizer import eos_token_id
    from smollm2.weights import load_run_model

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: already exists and is not an empty folder")
    model, tokenizer = load_run_model(checkpoint)
    # SmolLM2 (base) uses its end-of-document token as bos and eos alike.
    end_of_document = tokenizer.id_to_token(eos_token_id(tokenizer))

    def write(folder: Path) -> None:
        save_hf_folder(model, folder)
        save_hf_tokenizer(tokenizer, folder, bos_token=end_of_document, eos_token=end_of_document)

    write_atomic(out, write)
    return out


def run(args: argparse.Namespace) -> None:
    out = export(args.checkpoint, args.out)
    print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
