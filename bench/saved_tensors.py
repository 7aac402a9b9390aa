"""What one compiled 135M decoder layer keeps for backward with document masking: the model's split (rows of
several documents through FlexAttention, the others through causal SDPA) against every row through FlexAttention.

Builds one layer of configs/smollm2-135m.yaml's shape at micro-batch 64 x 2048 (3 rows holding a document
boundary), compiles its forward as smollm2/engine.py does, and runs forward under a saved-tensors hook: prints
for each mode the storages kept for backward, largest first, and the memory still held after forward. Each
mode runs twice (the first compiles). torch only, no DeepSpeed. On the device machine, from the repository root:
    PYTHONPATH=$PWD python3 bench/saved_tensors.py
On CPU it runs a tiny layer at 4 x 128 (the CPU kernels: boolean masks, not FlexAttention) as a smoke test.
"""

import torch

from smollm2 import model, ops
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BATCH, SEQ = (64, 2048) if CUDA else (4, 128)
SHAPE = {} if CUDA else dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=SEQ)  # fmt: skip
SPLIT = model._document_mask


def every_row(input_ids, eos_token_id):
    ids = model.document_ids(input_ids, eos_token_id)
    return input_ids, None, ops.document_block_mask(ids) if CUDA else model.document_causal_mask(ids)


def main() -> None:
    config = SmolLM2Config(**SHAPE, num_hidden_layers=1, block_size=SEQ, document_masking=True)
    torch.manual_seed(0)
    layer = SmolLM2ForCausalLM(config).to(DEVICE).model.layers[0]
    layer.forward = torch.compile(layer.forward)
    input_ids = torch.randint(1, config.vocab_size, (BATCH, SEQ), device=DEVICE)
    for row, position in ((0, SEQ // 3), (5 % BATCH, SEQ // 2), (9 % BATCH, 100)):
        input_ids[row, position] = config.eos_token_id
    rotary = model.SmolLM2RotaryEmbedding(config.head_dim, SEQ, config.rope_theta).to(DEVICE)
    position_ids = torch.arange(SEQ, device=DEVICE)[None]
    for mode in ("split", "every-row") * 2:
        model._document_mask = SPLIT if mode == "split" else every_row
        _, _, mask = model._document_mask(input_ids, config.eos_token_id)
        hidden = torch.randn(BATCH, SEQ, config.hidden_size, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
        cos, sin = (t.to(torch.bfloat16) for t in rotary(hidden, SEQ))
        storages, held, out = kept_for_backward(layer, hidden, cos, sin, position_ids, mask)
        total = sum(nbytes for _, _, nbytes in storages) / 2**30
        print(f"== {mode}: {len(storages)} storages kept for backward, {total:.3f} GiB; {held:.3f} GiB held after it")
        for shape, dtype, nbytes in sorted(storages, key=lambda s: -s[2])[:14]:
            print(f"   {nbytes / 2**20:9.1f} MiB {str(dtype).removeprefix('torch.'):9s} {shape}")
        out.float().sum().backward()


def kept_for_backward(layer, *inputs):
    """(shape, dtype, bytes) of each storage autograd keeps from `layer(*inputs)`, the GiB still allocated after
    it, and its output."""
    storages = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = (tuple(tensor.shape), tensor.dtype, storage.nbytes())
        return tensor

    before = torch.cuda.memory_allocated() if CUDA else 0
    with (
        torch.autocast(DEVICE, torch.bfloat16, enabled=CUDA),
        torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t),
    ):
        out, _ = layer(*inputs)
    held = (torch.cuda.memory_allocated() - before) / 2**30 if CUDA else float("nan")
    return list(storages.values()), held, out


if __name__ == "__main__":
    main()
