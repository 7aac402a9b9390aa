"""Document masking at 135M and block 2048: the model's split against no masking and against every row through
FlexAttention, timed (`bench`), trained (`train`) or taken apart (`saved`).

MODE is one of
    none        no document masking
    model       the model's masking: rows holding several documents through FlexAttention with their document
                mask, rows of one document through plain causal SDPA (smollm2/model.py, _document_mask)
    every-row   every row through FlexAttention with its document mask (the model before that split)
On the device machine, from the repository root, DATA a `smollm2 prepare` output (bench/README.md), one mode a
process (the bench's DeepSpeed engine is not made twice in one process):
    python3 bench/document_masking.py bench MODE DATA OUT.json [--flex-options JSON]
        `smollm2 bench` of configs/smollm2-135m.yaml at block 2048, micro-batch 64 x 4 (524,288 tokens a step, as
        the config at 512), 8 timed steps after 3; --flex-options: FlexAttention kernel_options for the masked
        rows (tiles BLOCK_M / BLOCK_N, backward BLOCK_M1 / N1 / M2 / N2, num_warps, num_stages, flags such as
        ROWS_GUARANTEED_SAFE), e.g. '{"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8}'
    python3 bench/document_masking.py train MODE DATA RUN_DIR
        150 steps of `smollm2 train` at micro-batch 16, the loss logged every step, for bench/compare_runs.py
    python3 bench/document_masking.py saved
        what one compiled decoder layer keeps for backward, the model's split against every-row, under a
        saved-tensors hook: 64 x 2048 with 3 rows holding a document boundary, torch only (on CPU: a tiny layer
        at 4 x 128 with the boolean masks, to check the code)
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from smollm2 import model, ops
from smollm2.cli import main as smollm2
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

MODES = ("none", "model", "every-row")
THE_MODELS_SPLIT = model._document_mask


def every_row_through_flex_attention(input_ids: torch.Tensor, eos_token_id: int):
    """_document_mask's contract with no split: every row keeps its place and gets the document mask."""
    ids = model.document_ids(input_ids, eos_token_id)
    mask = ops.document_block_mask(ids) if input_ids.is_cuda else model.document_causal_mask(ids)
    return input_ids, None, mask


def with_kernel_options(options: dict) -> None:
    """The model's FlexAttention call (smollm2.ops.flex_attention) with these kernel_options."""
    plain = ops.flex.flex_attention

    def flex_attention(q, k, v, block_mask, enable_gqa):
        return plain(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa, kernel_options=options or None)

    ops.flex_attention = flex_attention


def run_smollm2(command: str, mode: str, data: str, out: str) -> int:
    """`smollm2 bench` (out: the JSON) or `smollm2 train` (out: the run directory) of 135M at 2048 in `mode`."""
    settings = ["--config", "configs/smollm2-135m.yaml", "--set", f"data.path={data}", "model.block_size=2048",
                f"model.document_masking={mode != 'none'}"]  # fmt: skip
    if command == "bench":
        return smollm2(["bench", *settings, "train.micro_batch_size=64", "train.global_batch_size=256",
                        "--steps", "8", "--warmup", "3", "--out", out])  # fmt: skip
    return smollm2(["train", *settings, "train.micro_batch_size=16", "train.global_batch_size=16",
                    "train.max_steps=150", "schedule.warmup_steps=15", "logging.log_every=1",
                    "eval.eval_every=0", "eval.num_blocks=16", "checkpoint.save_every=0", f"train.out_dir={out}",
                    "--resume", "never"])  # fmt: skip


def saved_for_backward() -> None:
    """Print what one compiled decoder layer keeps for backward in each mode, twice each (the first compiles)."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch, seq = (64, 2048) if cuda else (4, 128)
    shape = {} if cuda else dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=seq)  # fmt: skip
    config = SmolLM2Config(**shape, num_hidden_layers=1, block_size=seq, document_masking=True)
    torch.manual_seed(0)
    layer = SmolLM2ForCausalLM(config).to(device).model.layers[0]
    layer.forward = torch.compile(layer.forward)
    input_ids = torch.randint(1, config.vocab_size, (batch, seq), device=device)
    for row, position in ((0, seq // 3), (5 % batch, seq // 2), (9 % batch, 100)):
        input_ids[row, position] = config.eos_token_id
    rotary = model.SmolLM2RotaryEmbedding(config.head_dim, seq, config.rope_theta).to(device)
    position_ids = torch.arange(seq, device=device)[None]
    for mode in ("model", "every-row") * 2:
        _, _, mask = (THE_MODELS_SPLIT if mode == "model" else every_row_through_flex_attention)(
            input_ids, config.eos_token_id
        )
        hidden = torch.randn(batch, seq, config.hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
        cos, sin = (t.to(torch.bfloat16) for t in rotary(hidden, seq))
        storages, held, out = kept_for_backward(layer, hidden, cos, sin, position_ids, mask)
        total = sum(nbytes for _, _, nbytes in storages) / 2**30
        print(f"== {mode}: {len(storages)} storages kept for backward, {total:.3f} GiB; {held:.3f} GiB held after it")
        for shape_of, dtype, nbytes in sorted(storages, key=lambda s: -s[2])[:14]:
            print(f"   {nbytes / 2**20:9.1f} MiB {str(dtype).removeprefix('torch.'):9s} {shape_of}")
        out.float().sum().backward()


def kept_for_backward(layer, *inputs):
    """(shape, dtype, bytes) of each storage autograd keeps from `layer(*inputs)`, the GiB still allocated after
    it (NaN on CPU), and its output."""
    storages = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = (tuple(tensor.shape), tensor.dtype, storage.nbytes())
        return tensor

    cuda = torch.cuda.is_available()
    before = torch.cuda.memory_allocated() if cuda else 0
    with (
        torch.autocast("cuda" if cuda else "cpu", torch.bfloat16, enabled=cuda),
        torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t),
    ):
        out, _ = layer(*inputs)
    held = (torch.cuda.memory_allocated() - before) / 2**30 if cuda else float("nan")
    return list(storages.values()), held, out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command, out_help in (("bench", "the bench's JSON"), ("train", "the run directory")):
        p = sub.add_parser(command)
        p.add_argument("mode", choices=MODES)
        p.add_argument("data", help="a `smollm2 prepare` output folder")
        p.add_argument("out", help=out_help)
        if command == "bench":
            p.add_argument("--flex-options", type=json.loads, metavar="JSON", help="FlexAttention kernel_options")
    sub.add_parser("saved")
    args = parser.parse_args(argv)
    if args.command == "saved":
        saved_for_backward()
        return 0
    if args.mode == "every-row":
        model._document_mask = every_row_through_flex_attention
    options = getattr(args, "flex_options", None)
    if options is not None:
        if not isinstance(options, dict) or args.mode == "none":
            parser.error("--flex-options: expected a JSON object, and a MODE that masks (model or every-row)")
        with_kernel_options(options)
    return run_smollm2(args.command, args.mode, args.data, args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
