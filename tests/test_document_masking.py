"""`model.document_masking`: a token attends only within its own document of a packed block.

The reference is the definition: running each document alone. SDPA with a boolean mask is the CPU path
(and trains there); FlexAttention, the CUDA path, runs forward only on CPU, where it is checked against SDPA.
"""

import warnings

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from conftest import ROOT
from smollm2 import model, ops
from smollm2.config import load_config
from smollm2.errors import UserError
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM, document_causal_mask, document_ids

EOS = 0
# GQA as in SmolLM2-135M: 9 query heads share 3 KV heads (head_dim 16 here).
GQA = dict(
    vocab_size=97,
    hidden_size=144,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=256,
    block_size=256,
    eos_token_id=EOS,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def model_pair(**overrides):
    """The same weights with document masking on and off."""
    torch.manual_seed(0)
    masked = SmolLM2ForCausalLM(SmolLM2Config(**{**GQA, **overrides, "document_masking": True})).eval()
    plain = SmolLM2ForCausalLM(SmolLM2Config(**{**GQA, **overrides, "document_masking": False})).eval()
    plain.load_state_dict(masked.state_dict())
    return masked, plain


def documents(lengths, generator, last_ends=True):
    """Random documents of these lengths, each ending with EOS (the last one too, unless not last_ends)."""
    docs = [torch.randint(1, GQA["vocab_size"], (n,), generator=generator) for n in lengths]
    for doc in docs[:-1] if not last_ends else docs:
        doc[-1] = EOS
    return docs


def test_document_ids_give_the_eos_to_the_document_it_ends():
    ids = torch.tensor([[5, 6, EOS, 7, EOS, EOS, 8, 9], [5, 6, 7, 8, 9, 5, 6, 7], [EOS, 5, 6, 7, 8, 9, 5, EOS]])
    assert document_ids(ids, EOS).tolist() == [
        [0, 0, 0, 1, 1, 2, 3, 3],  # an empty document is its EOS alone
        [0] * 8,  # a block inside one document
        [0, 1, 1, 1, 1, 1, 1, 1],  # a block starting with the last token of a document
    ]
    mask = document_causal_mask(document_ids(ids[:1], EOS))[0, 0]
    assert mask.shape == (8, 8)
    assert mask[3].tolist() == [False, False, False, True, False, False, False, False]
    assert mask[7].tolist() == [False] * 6 + [True, True]


@pytest.mark.parametrize("lengths", [[40, 100, 3, 1, 112], [256], [255, 1], [1, 255]])
def test_masked_logits_equal_each_document_alone(lengths):
    generator = torch.Generator().manual_seed(sum(lengths) + len(lengths))
    docs = documents(lengths, generator, last_ends=False)
    masked, plain = model_pair()
    with torch.no_grad():
        block = masked(torch.cat(docs)[None]).logits[0]
        alone = torch.cat([plain(doc[None]).logits[0] for doc in docs])
    torch.testing.assert_close(block, alone, rtol=0, atol=2e-5)


def test_masked_and_plain_differ_only_past_the_first_document():
    generator = torch.Generator().manual_seed(1)
    several = torch.stack([torch.cat(documents([60, 130, 66], generator)), torch.cat(documents([256], generator))])
    masked, plain = model_pair()
    with torch.no_grad():
        masked_logits, plain_logits = masked(several).logits, plain(several).logits
    # The first document sees the same keys either way; the second and third see fewer with masking.
    torch.testing.assert_close(masked_logits[0, :60], plain_logits[0, :60], rtol=0, atol=1e-6)
    assert (masked_logits[0, 60:] - plain_logits[0, 60:]).abs().amax(dim=-1).min() > 1e-3
    # One document (ending at the block's last token or running past it): nothing to mask.
    torch.testing.assert_close(masked_logits[1], plain_logits[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("checkpointing", [0, "selective"])
def test_loss_and_gradients_equal_those_of_the_documents_alone(checkpointing):
    """The training path (fused loss, `targets=`): block loss and gradients = token-weighted per-document ones.

    Rows of one document and rows of several are mixed in the batch, so the model reorders them (those of
    several documents attend through the mask, first) and must give the hidden states back in input order.
    """
    generator = torch.Generator().manual_seed(2)
    rows = [[256], [70, 120, 66], [256], [40, 216], [255, 1]]
    inputs = torch.stack([torch.cat(documents(lengths, generator)) for lengths in rows])
    targets = torch.cat([inputs[:, 1:], torch.full((len(rows), 1), EOS)], dim=1)
    masked, plain = model_pair()
    masked.train()
    if checkpointing:
        masked.set_activation_checkpointing(1, selective=True)
    loss = masked(inputs, targets=targets).loss
    loss.backward()
    expected = 0.0
    for row, lengths in enumerate(rows):
        for start, n in zip(torch.tensor([0, *lengths[:-1]]).cumsum(0).tolist(), lengths):
            chunk = slice(start, start + n)
            doc_loss = plain(inputs[row : row + 1, chunk], targets=targets[row : row + 1, chunk]).loss
            expected = expected + doc_loss * n / inputs.numel()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)
    for (name, got), want in zip(masked.named_parameters(), plain.parameters()):
        assert got.grad is not None and got.grad.abs().sum() > 0, name
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_rows_of_several_documents_attend_first_and_come_back_in_order():
    """Only rows holding several documents get the mask; the logits come back in the input's row order."""
    generator = torch.Generator().manual_seed(6)
    rows = [[256], [100, 156], [256], [30, 30, 196]]
    ids = torch.stack([torch.cat(documents(lengths, generator)) for lengths in rows])
    reordered, restore, mask = model._document_mask(ids, EOS)
    assert torch.equal(reordered, ids[[1, 3, 0, 2]]) and torch.equal(reordered[restore], ids)
    assert torch.equal(mask, document_causal_mask(document_ids(ids[[1, 3]], EOS)))
    masked, plain = model_pair()
    with torch.no_grad():
        logits = masked(ids).logits
        for row in (0, 2):  # one document: exactly plain causal attention
            torch.testing.assert_close(logits[row], plain(ids[row : row + 1]).logits[0], rtol=0, atol=1e-6)
        for row in (1, 3):
            alone = torch.cat([plain(doc[None]).logits[0] for doc in ids[row].split(rows[row])])
            torch.testing.assert_close(logits[row], alone, rtol=0, atol=2e-5)
    # Rows already in that order, and batches of one kind only, are not reordered.
    assert model._document_mask(ids[[1, 0]], EOS)[1] is None
    assert model._document_mask(ids[[0, 2]], EOS)[1:] == (None, None)
    assert model._document_mask(ids[[1, 3]], EOS)[1] is None


def test_generation_and_the_kv_cache_ignore_document_masking():
    prompt = torch.tensor([[5, 6, EOS, 7, 8, EOS, 9, 10]])
    masked, plain = model_pair()
    assert torch.equal(masked.generate(prompt, 6, temperature=0), plain.generate(prompt, 6, temperature=0))
    with torch.no_grad():
        cached, reference = masked(prompt, use_cache=True), plain(prompt)
    torch.testing.assert_close(cached.logits, reference.logits, rtol=0, atol=0)


def test_flex_block_mask_is_the_boolean_mask_and_skips_other_documents_tiles():
    generator = torch.Generator().manual_seed(3)
    ids = torch.stack(
        [
            torch.cat(documents([128, 128], generator)),  # a document boundary on FlexAttention's 128-tile edge
            torch.cat(documents([256], generator)),
            torch.cat(documents([37, 1, 100, 118], generator)),  # the third reaches back into tile 0
        ]
    )
    doc = document_ids(ids, EOS)
    block_mask = ops.document_block_mask(doc)
    dense = create_mask(ops.document_causal_mask_mod(doc), 3, 1, 256, 256, device="cpu")
    assert torch.equal(dense, document_causal_mask(doc))
    # Tiles of keys each query tile visits (partial + full): causal visits 1 then 2; the second tile of
    # row 0 skips the first document's keys entirely.
    visited = block_mask.kv_num_blocks + block_mask.full_kv_num_blocks  # [B, 1, query tiles]
    assert visited[:, 0].tolist() == [[1, 1], [1, 2], [1, 2]]


@pytest.mark.parametrize("lengths", [[40, 100, 3, 1, 112], [256]])
def test_flex_attention_path_equals_sdpa_on_cpu(lengths, monkeypatch):
    """The CUDA kernel path (BlockMask + FlexAttention), forward on CPU, against the SDPA path."""
    generator = torch.Generator().manual_seed(4)
    ids = torch.cat(documents(lengths, generator))[None].repeat(2, 1)
    ids[1, 128] = EOS  # another boundary in the second row
    masked, _ = model_pair()
    with torch.no_grad():
        sdpa = masked(ids).logits
        monkeypatch.setattr(ops, "flex_attention_supported", lambda device: True)
        with warnings.catch_warnings():  # "flex_attention called without torch.compile()": expected on CPU
            warnings.simplefilter("ignore", UserWarning)
            flex = masked(ids).logits
    torch.testing.assert_close(flex, sdpa, rtol=0, atol=2e-5)


@pytest.mark.slow
def test_compiled_flex_layers_recompile_once_for_new_documents(monkeypatch):
    """As smollm2/engine.py compiles each decoder layer (and ops compiles the block mask on CUDA): new
    document boundaries reuse the compiled code (a BlockMask is a graph input), and a new number of rows
    holding several documents does once (that number becomes dynamic); none, one and all of the rows are
    graphs of their own."""
    import torch._dynamo

    masked, _ = model_pair(num_hidden_layers=1)
    generator = torch.Generator().manual_seed(5)
    several = [[40, 216], [100, 100, 56], [3, 253], [128, 128], [255, 1]]

    def batch(mixed):  # 5 rows, `mixed` of them holding several documents, after those of one
        rows = [[256]] * (5 - mixed) + several[:mixed]
        return torch.stack([torch.cat(documents(lengths, generator)) for lengths in rows])

    batches = [batch(mixed) for mixed in (2, 3, 4, 2, 1, 5, 0)]
    with torch.no_grad():
        expected = [masked(ids).logits for ids in batches]  # the SDPA path, uncompiled
    monkeypatch.setattr(ops, "flex_attention_supported", lambda device: True)
    torch._dynamo.reset()
    graphs = []

    def counting_aot_eager(graph, example_inputs):
        # aot_eager: dynamo's graph and guards as on CUDA, without inductor's CPU FlexAttention template.
        graphs.append(graph)
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)

    for layer in masked.model.layers:
        layer.forward = torch.compile(layer.forward, backend=counting_aot_eager)
    build_mask = ops._compiled_document_block_mask()
    graphs_after = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for ids, want in zip(batches, expected):
            doc = document_ids(ids, EOS)
            compiled, eager = build_mask(doc), ops._document_block_mask(doc)
            for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
                assert torch.equal(getattr(compiled, name), getattr(eager, name)), name
            torch.testing.assert_close(masked(ids).logits, want, rtol=0, atol=2e-5)
            graphs_after.append(len(graphs))
    torch._dynamo.reset()
    # The rows of several documents: 2, 3 (now dynamic), 4 (one row of one document left: that part's batch
    # of 1 is a graph of its own), 2 again (no new graph); 1, 5 and 0 at most one each. The limit of 8
    # (torch._dynamo.config.recompile_limit) is not reached.
    assert graphs_after[:4] == [1, 2, 3, 3] and graphs_after[-1] <= 6, graphs_after


def test_config_key_is_checked_and_reaches_the_model():
    required = ["data.path=data", "train.out_dir=run", "train.max_steps=10", "schedule.warmup_steps=1"]
    config = load_config(ROOT / "configs/smollm2-135m.yaml", [*required, "model.document_masking=true"])
    assert SmolLM2Config(**config.model.architecture()).document_masking is True
    assert load_config(ROOT / "configs/smollm2-135m.yaml", required).model.document_masking is False
    with pytest.raises(UserError, match="model.document_masking"):
        load_config(ROOT / "configs/smollm2-135m.yaml", [*required, "model.document_masking=sometimes"])
