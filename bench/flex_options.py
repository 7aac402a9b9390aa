"""`smollm2 bench` of 135M at block 2048 with document masking under one set of FlexAttention kernel_options.

The model's FlexAttention call (smollm2.ops.flex_attention) takes inductor's default tile sizes; this times
others (forward BLOCK_M/BLOCK_N, backward BLOCK_M1/N1/M2/N2, warps, stages). One variant per process (the
bench's DeepSpeed engine is not made twice in one process). On the device machine, as bench/issue15_h200.sh
runs (DATA prepared with the SmolLM2 tokenizer):
    python3 bench/flex_options.py DATA OUT/flex_1.json '{}'                                      # the defaults
    python3 bench/flex_options.py DATA OUT/flex_2.json '{"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8}'
    python3 bench/flex_options.py DATA OUT/flex_0.json null                                      # no masking
"""

import json
import sys

from smollm2 import ops
from smollm2.cli import main as smollm2


def with_kernel_options(options: dict) -> None:
    plain = ops.flex.flex_attention

    def flex_attention(q, k, v, block_mask, enable_gqa):
        return plain(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa, kernel_options=options or None)

    ops.flex_attention = flex_attention


def main(data: str, out: str, options_json: str) -> int:
    options = json.loads(options_json)
    if options is not None:
        with_kernel_options(options)
    return smollm2(["bench", "--config", "configs/smollm2-135m.yaml", "--set", f"data.path={data}",
                    "model.block_size=2048", "train.micro_batch_size=64", "train.global_batch_size=256",
                    f"model.document_masking={options is not None}", "--steps", "8", "--warmup", "3",
                    "--out", out])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
