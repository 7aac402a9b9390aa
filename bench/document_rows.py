"""135M at block 2048 without and with document masking: `smollm2 bench` (micro-batch 64 x 4), or a short
`smollm2 train` (micro-batch 16, 150 steps, the loss logged at every step) to compare how two modes train.

MODE is one of:
    none        no document masking
    model       document masking as the model does it: rows holding several documents through FlexAttention,
                rows of one document through plain causal SDPA (smollm2/model.py, _document_mask)
    every-row   every row through FlexAttention with its document mask (the model before that split)
One mode per process (the bench's DeepSpeed engine is not made twice in one process). On the device machine,
from the repository root (DATA prepared with the SmolLM2 tokenizer, as bench/issue15c_h200.sh runs it):
    python3 bench/document_rows.py MODE DATA bench OUT.json
    python3 bench/document_rows.py MODE DATA train RUN_DIR
and `python3 bench/compare_runs.py RUN_DIR_A RUN_DIR_B` compares two training runs.
"""

import sys

from smollm2 import model, ops
from smollm2.cli import main as smollm2

MODES = ("none", "model", "every-row")


def every_row_through_flex_attention(input_ids, eos_token_id):
    return input_ids, None, ops.document_block_mask(model.document_ids(input_ids, eos_token_id))


def main(mode: str, data: str, command: str, out: str) -> int:
    if mode not in MODES:
        raise SystemExit(f"MODE: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "every-row":
        model._document_mask = every_row_through_flex_attention
    settings = ["--config", "configs/smollm2-135m.yaml", "--set", f"data.path={data}", "model.block_size=2048",
                f"model.document_masking={mode != 'none'}"]  # fmt: skip
    if command == "bench":
        return smollm2(["bench", *settings, "train.micro_batch_size=64", "train.global_batch_size=256",
                        "--steps", "8", "--warmup", "3", "--out", out])  # fmt: skip
    if command == "train":
        return smollm2(["train", *settings, "train.micro_batch_size=16", "train.global_batch_size=16",
                        "train.max_steps=150", "schedule.warmup_steps=15", "logging.log_every=1",
                        "eval.eval_every=0", "eval.num_blocks=16", "checkpoint.save_every=0",
                        f"train.out_dir={out}", "--resume", "never"])  # fmt: skip
    raise SystemExit(f"command: expected bench or train, got {command!r}")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
