from zj_utils.base_model import pack_tokens


def test_packing_fills_blocks_without_padding_and_reorders_documents_each_epoch():
    docs = [[i] * (3 + i % 4) for i in range(1, 30)]  # documents of 3-6 tokens, token i only in document i
    blocks = pack_tokens(docs, block_size=8, eos_id=0, epochs=2, seed=0)
    assert all(len(b) == 8 for b in blocks)
    per_epoch = sum(len(d) + 1 for d in docs) // 8
    first, second = blocks[:per_epoch], blocks[per_epoch:]
    assert len(second) == per_epoch
    assert first != second  # a new order: a small model cannot learn each block by heart from its context
    # each epoch packs every document; only the tail that does not fill a last block is left out
    from collections import Counter
    counts = Counter(t for b in first for t in b if t)
    lost = sum(len(docs[i - 1]) - counts[i] for i in range(1, 30))
    assert 0 <= lost < 8
    assert pack_tokens(docs, 8, 0, epochs=2, seed=0) == blocks  # seeded
