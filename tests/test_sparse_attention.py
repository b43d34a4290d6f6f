"""InfLLM v2 sparse attention: the fast CPU path against the slow reference, and what it must find."""

import dataclasses

import pytest
import torch
from infllm_reference import reference_attention

from runtime.errors import UnsupportedModelError
from runtime.model import dense_attention
from runtime.sparse_attention import (
    CompressedKeys,
    SparseSettings,
    resolve_sparse,
    select_blocks,
    sparse_attention,
)

# Small blocks and kernels so that a few hundred tokens exercise every part of the algorithm:
# 1 init block, a 2-block window, 3 blocks by score (5 selected of 16-token blocks).
SMALL = SparseSettings(kernel_size=8, kernel_stride=4, init_blocks=1, block_size=16, window_size=32,
                       topk=3, dense_len=0)
TIE = 1e-4  # float32 vs float64 scores: blocks this close at the top-k cut may swap


def qkv(heads, kv_heads, length, dim, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, length, dim, generator=gen).to(dtype) for n in (heads, kv_heads, kv_heads))


def fast_selection(q, k, q_start, st):
    """{(group, query): set of blocks} from the fast path's stage 1."""
    hkv, d = k.shape[0], k.shape[-1]
    compressed = CompressedKeys(st, 1, hkv, d, k.shape[1], k.dtype)
    compressed.update(k[None])
    t = q.shape[1]
    chosen, scores = select_blocks(q.reshape(hkv, -1, t, d), compressed, q_start, q_start + t)
    valid = scores > float("-inf")
    return {(g, i): set(chosen[g, i][valid[g, i]].tolist()) for g in range(hkv) for i in range(t)}


def assert_same_selection(fast, ref, ref_scores, tie=TIE, most_swaps=None):
    """Identical sets, except for swaps between blocks whose reference scores tie at the cut."""
    swaps = 0
    for key, chosen in ref.items():
        diff = fast[key] ^ chosen
        if diff:
            scored = [ref_scores[key][b] for b in chosen if b in ref_scores[key]]
            cut = min(scored)
            assert all(abs(ref_scores[key][b] - cut) <= tie * cut for b in diff), (key, diff)
            swaps += 1
    assert swaps <= (len(ref) // 100 if most_swaps is None else most_swaps)  # rare, and only at exact-looking ties


def fast_attention(q, k, v, q_start, st, chunks=None):
    """The fast path as the runtime drives it: compressed keys grow chunk by chunk with the cache."""
    hkv, d = k.shape[0], k.shape[-1]
    compressed = CompressedKeys(st, 1, hkv, d, k.shape[1], k.dtype)
    t = q.shape[1]
    bounds = chunks or [t]
    out, lo = [], 0
    for hi in bounds:
        end = q_start + hi
        compressed.update(k[None, :, :end])
        out.append(sparse_attention(q[None, :, lo:hi], k[None, :, :end], v[None, :, :end], q_start + lo,
                                    compressed, dense_attention)[0])
        lo = hi
    return torch.cat(out, dim=1)


@pytest.fixture(params=["torch", "c-kernel"])
def stage1(request, monkeypatch):
    """Both implementations of stage 1: torch operations, and the fused C kernel."""
    from runtime import cpu_kernel

    if request.param == "torch":
        monkeypatch.setattr(cpu_kernel, "available", lambda *args: False)
    else:
        assert cpu_kernel.available(16), "this machine has a C compiler: the kernel must build"
    return request.param


@pytest.mark.parametrize("use_lse", [True, False])
@pytest.mark.parametrize("length", [300, 517])  # not multiples of the block size
def test_stage1_selects_the_reference_blocks(length, use_lse, stage1):
    st = dataclasses.replace(SMALL, use_lse=use_lse)
    q, k, v = qkv(6, 2, length, 16, seed=length)
    _, _, ref, ref_scores = reference_attention(q, k, v, 0, st)
    assert_same_selection(fast_selection(q, k, 0, st), ref, ref_scores)


@pytest.mark.parametrize("chunks", [None, [37, 100, 301, 517], list(range(300, 518))])  # whole, chunked, decode
def test_outputs_match_the_reference(chunks):
    length = 517
    q, k, v = qkv(6, 2, length, 16, seed=3)
    ref, _, selections, _ = reference_attention(q, k, v, 0, SMALL)
    fast_sel = fast_selection(q, k, 0, SMALL)
    same = [i for i in range(length) if all(fast_sel[g, i] == selections[g, i] for g in range(2))]
    assert len(same) >= length - 5
    out = fast_attention(q, k, v, 0, SMALL, chunks)
    torch.testing.assert_close(out[:, same], ref[:, same].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [8, 24, 40])  # the C kernel's scalar tails: not multiples of its 16-float vectors
def test_head_dims_off_the_vector_width_match_the_reference(dim):
    length = 517
    q, k, v = qkv(6, 2, length, dim, seed=dim)
    ref, _, selections, ref_scores = reference_attention(q, k, v, 0, SMALL)
    fast_sel = fast_selection(q, k, 0, SMALL)
    assert_same_selection(fast_sel, selections, ref_scores)
    same = [i for i in range(length) if all(fast_sel[g, i] == selections[g, i] for g in range(2))]
    out = fast_attention(q, k, v, 0, SMALL, chunks=[300, 517])
    torch.testing.assert_close(out[:, same], ref[:, same].float(), atol=1e-5, rtol=1e-5)
    decoded = fast_attention(q, k, v, 0, SMALL, chunks=list(range(500, 518)))  # one query at a time
    torch.testing.assert_close(decoded[:, 500:][:, [i - 500 for i in same if i >= 500]],
                               ref[:, [i for i in same if i >= 500]].float(), atol=1e-5, rtol=1e-5)


def test_more_than_32_heads_per_group_run_in_torch():
    """The C kernel takes up to 32 query heads per KV head; a wider group runs the torch path."""
    from runtime import cpu_kernel

    assert not cpu_kernel.available(16, torch.float32, groups=40)
    q, k, v = qkv(40, 1, 300, 16, seed=40)
    ref, _, selections, _ = reference_attention(q, k, v, 0, SMALL)
    fast_sel = fast_selection(q, k, 0, SMALL)
    same = [i for i in range(300) if fast_sel[0, i] == selections[0, i]]
    assert len(same) >= 295
    out = fast_attention(q, k, v, 0, SMALL)
    torch.testing.assert_close(out[:, same], ref[:, same].float(), atol=1e-5, rtol=1e-5)


def test_a_top_k_covering_every_block_is_dense_attention():
    q, k, v = qkv(8, 2, 700, 32, seed=5)
    every = dataclasses.replace(SMALL, topk=1000)
    out = fast_attention(q, k, v, 0, every)
    expected = dense_attention(q[None], k[None], v[None], 0)[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_queries_below_dense_len_attend_densely():
    q, k, v = qkv(6, 2, 400, 16, seed=6)
    st = dataclasses.replace(SMALL, dense_len=200)
    out = fast_attention(q, k, v, 0, st, chunks=[150, 250, 400])  # a chunk straddles the threshold
    dense = dense_attention(q[None], k[None], v[None], 0)[0]
    torch.testing.assert_close(out[:, :199], dense[:, :199], atol=1e-5, rtol=1e-5)  # p + 1 < 200
    assert not torch.allclose(out[:, 300:], dense[:, 300:], atol=1e-3)  # past it, sparse differs
    ref, mask, _, _ = reference_attention(q, k, v, 0, st)
    assert mask[:, :199].sum() == sum(range(1, 200)) * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_minicpm4_8b_shape_and_defaults_at_12k(dtype):
    """Default sparse_config, 32 query / 2 KV heads, head_dim 128: a decode query and a short chunk.
    In bfloat16 the C kernel multiplies bfloat16 directly where the CPU can (AVX512-BF16), with 16
    heads to a vector: outputs within bfloat16's rounding of the reference. Its compressed keys are
    bfloat16 too (means rounded by up to 2^-9), which moves scores by about 1e-4 of themselves, so
    blocks that close at the cut may swap; where a query's blocks are the reference's, so are its
    outputs."""
    st = SparseSettings()
    length = 12_000
    q, k, v = qkv(32, 2, length, 128, seed=7, dtype=dtype)
    half = dtype == torch.bfloat16
    tol = dict(atol=4e-3, rtol=8e-3) if half else dict(atol=1e-5, rtol=1e-4)
    positions = [length - 8, length - 1]
    for lo in positions:
        qs = q[:, lo : lo + (8 if lo == length - 8 else 1)]
        ref, _, selections, scores = reference_attention(qs, k[:, : lo + qs.shape[1]], v[:, : lo + qs.shape[1]], lo, st)
        fast = fast_selection(qs, k[:, : lo + qs.shape[1]], lo, st)
        assert_same_selection(fast, selections, scores, tie=1e-3 if half else TIE, most_swaps=2 if half else None)
        assert all(len(s) == st.selected_blocks for s in selections.values())  # 96 blocks of 64
        same = [i for i in range(qs.shape[1]) if all(fast[g, i] == selections[g, i] for g in range(2))]
        assert len(same) >= max(1, qs.shape[1] - 2)
        out = fast_attention(qs, k[:, : lo + qs.shape[1]], v[:, : lo + qs.shape[1]], lo, st)
        torch.testing.assert_close(out[:, same].float(), ref[:, same].float(), **tol)


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.8])
def test_a_planted_key_is_found_at_any_depth_of_a_16k_context(depth):
    """Keys are noise except a short run at one depth that matches what the last queries ask for.
    The blocks holding it are outside every forced block, so only stage 1 can find them; stage 2
    must then return the value stored there."""
    st = SparseSettings()
    length, d = 16_384 + 500, 64
    gen = torch.Generator().manual_seed(int(depth * 100))
    k = torch.randn(1, length, d, generator=gen) * 0.3
    v = torch.randn(1, length, d, generator=gen) * 0.3
    u = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    planted = int(depth * 16_384)
    assert planted // 64 > st.init_blocks and planted < length - st.window_size - 64  # not forced
    k[0, planted : planted + 4] = 12.0 * u  # a 4-token run: diluted 8x by the 32-token kernels
    marker = torch.zeros(d)
    marker[0] = 5.0
    v[0, planted : planted + 4] = marker
    # logit 8 * 12 / sqrt(64) = 12 on the run: it outweighs the ~6K other selected tokens 100 to 1
    q = (8.0 * u).expand(8, 4, d).contiguous()  # 8 query heads, the 4 last positions
    q_start = length - 4
    selected = fast_selection(q, k, q_start, st)
    assert all(planted // 64 in blocks for blocks in selected.values())
    out = fast_attention(q, k, v, q_start, st)
    assert (out[:, :, 0] > 4.5).all()  # attention lands on the planted run (without it: about 0)


def test_settings_and_modes():
    from tiny_checkpoint import tiny_config

    from runtime.config import SparseConfig, config_from_hf

    with pytest.raises(UnsupportedModelError, match="multiples of kernel_stride"):
        SparseSettings(block_size=50)
    with pytest.raises(UnsupportedModelError, match="window_size"):
        SparseSettings(window_size=100)
    assert SparseSettings(dense_len=-1).dense_len == -1  # upstream's "sparse from the start"
    with pytest.raises(UnsupportedModelError, match="dense_len"):
        SparseSettings(dense_len=-2)
    cfg = SparseSettings.from_config(SparseConfig(topk=32), window_size=1024)
    assert (cfg.topk, cfg.window_size, cfg.selected_blocks) == (32, 1024, 48)
    assert SparseSettings().selected_blocks == 96
    assert resolve_sparse("off", None, {"topk": 8})[0] is None
    assert "--sparse-topk has no effect" in resolve_sparse("off", None, {"topk": 8})[1][0]
    minicpm = config_from_hf(tiny_config(600))
    with_sparse = config_from_hf(tiny_config(600, sparse_config={"topk": 16}))
    llama = config_from_hf(tiny_config(600, minicpm=False))
    assert resolve_sparse("auto", minicpm)[0] is None  # released MiniCPM4 configs carry no sparse_config
    assert resolve_sparse("auto", with_sparse)[0].topk == 16
    assert resolve_sparse("auto", llama)[0] is None
    assert resolve_sparse("on", llama)[0] == SparseSettings()  # forced on: MiniCPM4-8B's values
    with pytest.raises(UnsupportedModelError, match="use_nope"):
        resolve_sparse("auto", config_from_hf(tiny_config(600, sparse_config={"use_nope": True})))


def test_the_model_runs_sparse_with_a_growing_cache(tiny_minicpm):
    """Chunked prefill and decode grow the compressed keys as they go; one uncached forward makes
    them at once. Both must give the same logits, and they must differ from dense attention."""
    from runtime.loading import load_torch_model

    model = load_torch_model(str(tiny_minicpm), dtype="float32").model
    model.sparse = dataclasses.replace(SMALL, dense_len=64)
    x = torch.randint(3, 500, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = model(x)
        cache = model.new_cache(capacity=300)
        pieces = [model(x[:, :100], cache), model(x[:, 100:237], cache)]
        pieces += [model(x[:, i : i + 1], cache) for i in range(237, 300)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=5e-5, rtol=1e-5)
        model.sparse = None
        dense = model(x)
    torch.testing.assert_close(dense[:, :63], whole[:, :63], atol=5e-5, rtol=1e-5)  # below dense_len
    assert (dense[:, 150:] - whole[:, 150:]).abs().max() > 1e-2


@pytest.mark.parametrize("strategy", ["torch-per-query", "torch-union", "c-kernel"])
def test_every_stage2_strategy_matches_the_reference(monkeypatch, strategy):
    import runtime.sparse_attention as sparse
    from runtime import cpu_kernel

    if strategy == "c-kernel":
        assert cpu_kernel.available(16), "this machine has a C compiler: the kernel must build"
    else:
        monkeypatch.setattr(cpu_kernel, "available", lambda *args: False)
        monkeypatch.setattr(sparse, "UNION_FACTOR", 0 if strategy == "torch-per-query" else 10_000)
    length = 517
    q, k, v = qkv(6, 2, length, 16, seed=9)
    ref, _, selections, _ = reference_attention(q, k, v, 0, SMALL)
    fast_sel = fast_selection(q, k, 0, SMALL)
    same = [i for i in range(length) if all(fast_sel[g, i] == selections[g, i] for g in range(2))]
    out = fast_attention(q, k, v, 0, SMALL, chunks=[200, 517])
    torch.testing.assert_close(out[:, same], ref[:, same].float(), atol=1e-5, rtol=1e-5)
    # A context still inside its first block (a short prompt) is plain causal attention.
    short = fast_attention(q[:, :11], k[:, :11], v[:, :11], 0, SMALL, chunks=[7, 8, 9, 10, 11])
    torch.testing.assert_close(short, dense_attention(q[None, :, :11], k[None, :, :11], v[None, :, :11], 0)[0],
                               atol=1e-5, rtol=1e-5)
    decoded = fast_attention(q, k, v, 0, SMALL, chunks=list(range(480, 518)))  # one query at a time
    torch.testing.assert_close(decoded[:, 480:][:, [i - 480 for i in same if i >= 480]],
                               ref[:, [i for i in same if i >= 480]].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("heads, kv_heads, dim", [(32, 2, 128), (64, 2, 64), (9, 3, 64)])
def test_the_c_kernel_in_bfloat16_is_within_rounding_of_exact(heads, kv_heads, dim):
    """bfloat16 inputs against float64 attention over the same (rounded) values: off by about one
    bfloat16 step of the output (2^-8; the bound is twice that), for groups of 16 and 32 heads
    (bfloat16 dot products where the CPU has them) and of 3 (widened to float32). Ranges of odd
    and short lengths (the chunk tails, an odd last key pair), several spans, and a query alone
    (the decode path)."""
    from runtime import cpu_kernel

    g, t = heads // kv_heads, 8
    q, k, v = (x.bfloat16() for x in qkv(heads, kv_heads, 4000, dim, seed=11))
    qg = q[:, :t].reshape(kv_heads, g, t, dim)
    spread = torch.tensor([[[[0, 64], [3000, 3001 + i], [640, 705 + 2 * i], [1280, 2600]] for i in range(t)]] * kv_heads)
    short = torch.tensor([[[[100, 100 + n]] for n in (1, 2, 3, 9, 63, 65, 129, 1030)]] * kv_heads)
    for ranges in (spread, short):
        out = cpu_kernel.attend_ranges(qg, k, v, ranges)
        alone = cpu_kernel.attend_ranges(qg[:, :, 3:4], k, v, ranges[:, 3:4])
        for h in range(kv_heads):
            for i in range(t):
                keys = torch.cat([torch.arange(a, b) for a, b in ranges[h, i].tolist()])
                logits = qg[h, :, i].double() @ k[h, keys].double().T / dim**0.5
                exact = torch.softmax(logits, dim=-1) @ v[h, keys].double()
                bound = 2**-7 * exact.abs().max()
                assert (out[h, :, i].double() - exact).abs().max() < bound, (h, i)
                if i == 3:
                    assert (alone[h, :, 0].double() - exact).abs().max() < bound, h


def test_the_kernel_multiplies_bfloat16_directly_where_the_compiler_targets_avx512_bf16():
    """The fast bfloat16 path is on exactly when this CPU's build has AVX512-BF16 (and BW), so a
    build that silently loses it fails here instead of only running slower."""
    import subprocess

    from runtime import cpu_kernel

    compiler = cpu_kernel.find_c_compiler()
    macros = subprocess.run([compiler, "-march=native", "-dM", "-E", "-x", "c", "/dev/null"],
                            capture_output=True, text=True, check=True).stdout
    expected = "__AVX512BF16__" in macros and "__AVX512BW__" in macros
    assert cpu_kernel.bf16_dot_products() == expected


@pytest.mark.parametrize("heads, kv_heads", [(9, 3), (32, 2), (64, 2)])  # 16, 32 per group: bfloat16 products
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_c_kernel_gives_a_query_the_same_numbers_alone_or_in_a_chunk(dtype, heads, kv_heads):
    """A decode step (one query: its keys are split between threads, then merged) and the same query
    in a chunk (whole queries per thread) must agree to the bit, in both stages: speculative
    verification relies on a query's output not depending on what came with it."""
    from runtime import cpu_kernel

    st = SparseSettings()  # MiniCPM4-8B's defaults, 4,000+ keys per query: several key spans
    g = heads // kv_heads
    q, k, v = qkv(heads, kv_heads, 12_000, 64, seed=12, dtype=dtype)
    compressed = CompressedKeys(st, 1, kv_heads, 64, 12_000, dtype)
    compressed.update(k[None])
    start, t = 11_904, 40  # a chunk inside one 64-token block
    qg = q[:, start : start + t].reshape(kv_heads, g, t, 64)
    chosen, values = select_blocks(qg, compressed, start, start + t)
    one_c, one_v = select_blocks(qg[:, :, 7:8], compressed, start + 7, start + 8)
    assert torch.equal(one_c, chosen[:, 7:8]) and torch.equal(one_v, values[:, 7:8])
    ranges = torch.tensor([[[[0, 64 + i], [3000, 5100 + i], [6400, 6464], [9600, 9664]] for i in range(t)]] * kv_heads)
    together = cpu_kernel.attend_ranges(qg, k, v, ranges)
    alone = cpu_kernel.attend_ranges(qg[:, :, 7:8], k, v, ranges[:, 7:8])
    assert torch.equal(alone, together[:, :, 7:8])
    ref = dense_attention(qg[:, :, 7:8].reshape(1, heads, 1, 64).float(), k[None, :, :64 + 7].float(),
                          v[None, :, :64 + 7].float(), 0)  # the first range alone, as a check on the merge
    first = cpu_kernel.attend_ranges(qg[:, :, 7:8], k, v, ranges[:, 7:8, :1])
    torch.testing.assert_close(first.float().reshape(1, heads, 1, 64), ref,
                               atol=2e-2 if dtype == torch.bfloat16 else 1e-5,
                               rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)


def both_selections(q, k, q_start, st, monkeypatch):
    """(torch, C) stage-1 selections for the same inputs."""
    from runtime import cpu_kernel

    c_sel = fast_selection(q, k, q_start, st)
    with monkeypatch.context() as patch:
        patch.setattr(cpu_kernel, "available", lambda *args: False)
        torch_sel = fast_selection(q, k, q_start, st)
    return torch_sel, c_sel


@pytest.mark.parametrize("window", [32, 0])  # no local window: a query's latest kernels score its previous block
@pytest.mark.parametrize("heads, dim", [(6, 32), (32, 64), (64, 64)])  # 16, 32 per group: bfloat16 dot products
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_and_c_stage1_agree(dtype, heads, dim, window, monkeypatch):
    """Both score in float32 (products of bfloat16 are exact in float32; rounding them to bfloat16
    would reorder blocks near the cut), so in either dtype they part only where float32 summation
    order decides a tie."""
    # 2 init blocks (the second is future to block 0) and 3 or 5 blocks by score
    st = dataclasses.replace(SMALL, init_blocks=2, topk=6, window_size=window)
    q, k, _ = qkv(heads, 2, 700, dim, seed=21, dtype=dtype)
    torch_sel, c_sel = both_selections(q, k, 0, st, monkeypatch)
    assert torch_sel[0, 3] == c_sel[0, 3] == {0}  # block 1 is in the future: never selected
    same = sum(torch_sel[key] == c_sel[key] for key in torch_sel)
    assert same >= 0.99 * len(torch_sel)
    # The scores themselves, for a chunk and for the last query alone (the kernel's decode path).
    from runtime import cpu_kernel

    compressed = CompressedKeys(st, 1, 2, dim, 700, dtype)
    compressed.update(k[None])
    qg = q.reshape(2, heads // 2, 700, dim)
    for lo in (0, 699):
        c_out = select_blocks(qg[:, :, lo:], compressed, lo, 700)
        with monkeypatch.context() as patch:
            patch.setattr(cpu_kernel, "available", lambda *args: False)
            torch_out = select_blocks(qg[:, :, lo:], compressed, lo, 700)
        (c_blocks, c_values), (t_blocks, t_values) = (
            (chosen.gather(-1, chosen.argsort(-1)), values.gather(-1, chosen.argsort(-1))) for chosen, values in (c_out, torch_out)
        )
        rows = (c_blocks == t_blocks).all(-1)
        assert rows.float().mean() >= 0.99
        torch.testing.assert_close(c_values[rows], t_values[rows], rtol=1e-4, atol=1e-6)


def test_a_runaway_score_never_passes_for_a_forced_block(monkeypatch):
    """With the LSE approximation a C1 logit can exceed the coarse LSE by far; its score is capped,
    so +inf still marks exactly the forced blocks and every query keeps all its scored blocks."""
    q, k, v = qkv(6, 2, 400, 16, seed=22)
    k[:, 100:104] *= 400.0  # four huge keys: one C1 kernel towers over the C2 kernel around it
    q = q * 50.0
    from runtime import cpu_kernel

    compressed = CompressedKeys(SMALL, 1, 2, 16, 400, k.dtype)
    compressed.update(k[None])
    forced = 1 + SMALL.local_blocks + 1  # init, the window, the query's own block
    for kernel in (True, False):
        with monkeypatch.context() as patch:
            if not kernel:
                patch.setattr(cpu_kernel, "available", lambda *args: False)
            _, values = select_blocks(q[:, 380:].reshape(2, 3, 20, 16), compressed, 380, 400)
        assert ((values == float("inf")).sum(-1) == forced).all(), f"C kernel: {kernel}"
        assert torch.isfinite(values[..., forced:]).all()


def test_loading_the_kernel_leaves_floating_point_alone():
    """A library linked with -ffast-math would switch the process to flush denormals to zero."""
    code = (
        "from runtime import cpu_kernel\n"
        "assert cpu_kernel.library() is not None\n"
        "tiny = float('1e-310')\n"
        "assert tiny * 0.5 > 0, 'denormals are flushed to zero after loading the kernel'\n"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
