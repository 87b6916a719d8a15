"""The CPU fast paths of AbsTopK and of the weight top-k equal their torch.topk references (values and
AbsTopK gradients) on random, tied, all-zero and non-finite inputs."""

from __future__ import annotations

import sys

import pytest
import torch

import sparsecircuits.model  # noqa: F401  (loads the abstopk module; the package re-exports the function)
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.gpt import GPT
from sparsecircuits.train import sparsity
from sparsecircuits.train.sparsity import WeightSparsifier, project_, threshold_keep_bits, topk_mask

abstopk_mod = sys.modules["sparsecircuits.model.abstopk"]
DTYPES = [torch.float32, torch.float64]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor, so equality also checks signs of zero."""
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def reference_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    idx = torch.topk(x.abs(), k, dim=-1).indices
    return torch.zeros_like(x, dtype=torch.bool).scatter(-1, idx, True)


def check_abstopk_equal(x: torch.Tensor, k: int) -> None:
    """Fast and reference AbsTopK: equal outputs and equal input gradients for a random upstream gradient."""
    x = x.detach().requires_grad_(True)
    fast, ref = abstopk_mod.abstopk_threshold(x, k), abstopk_mod.abstopk_reference(x, k)
    assert torch.equal(fast, ref)
    g = torch.randn(x.shape, dtype=x.dtype)
    (g_fast,) = torch.autograd.grad((fast * g).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * g).sum(), x)
    assert torch.equal(g_fast, g_ref)


# ---- AbsTopK --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((2048, 128), 64), ((3, 7, 128), 32), ((50, 512), 128), ((10, 5), 1)])
def test_abstopk_fast_path_equals_reference_on_random_rows(dtype, shape, k):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=dtype)
    assert abstopk_mod.threshold_keep(x, k) is not None  # the fast path decides
    check_abstopk_equal(x, k)
    # Bit for bit what torch.where(keep, x, 0) gives (the previous CPU path): x where kept, +0.0 elsewhere.
    out = abstopk_mod.abstopk_threshold(x, k)
    assert torch.equal(bits(out), bits(torch.where(reference_mask(x, k), x, torch.zeros((), dtype=dtype))))


def test_abstopk_reused_scratch_across_shapes_and_threads():
    """The fast path's work arrays are reused per thread: blocks of other sizes in turn, and two threads at
    once, each still get their own rows' answer."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(2)
    blocks = [
        (torch.randn(rows, n), k) for rows, n, k in [(512, 64, 16), (40, 512, 200), (2000, 64, 31), (7, 8, 3)]
    ]
    expected = [reference_mask(x, k).numpy() for x, k in blocks]
    for _ in range(2):
        for (x, k), want in zip(blocks, expected, strict=True):
            assert (abstopk_mod.threshold_keep(x, k) == want).all()
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda b: abstopk_mod.threshold_keep(*b), blocks * 8))
    for keep, want in zip(got, expected * 8, strict=True):
        assert (keep == want).all()


def test_abstopk_fast_path_on_non_contiguous_views():
    torch.manual_seed(1)
    qkv = torch.randn(4, 16, 3 * 32, requires_grad=True)
    for part in qkv.split(32, dim=-1):  # how the model splits q, k and v
        assert not part.is_contiguous()
        check_abstopk_equal(part, 8)
    check_abstopk_equal(qkv.transpose(0, 1), 24)  # a permuted layout
    # An expanded (stride 0) upstream gradient, as sum() sends back.
    (grad,) = torch.autograd.grad(abstopk_mod.abstopk_threshold(qkv, 24).sum(), qkv)
    assert torch.equal(grad, reference_mask(qkv.detach(), 24).float())


def test_abstopk_ties_at_the_threshold_take_the_reference_choice_row_by_row():
    x = torch.tensor([[1.0, -1.0, 1.0, 0.5], [3.0, 2.0, 1.0, 0.0]])
    assert abstopk_mod.threshold_keep(x, 2) is not None  # row 0 would keep three entries at its threshold
    check_abstopk_equal(x, 2)  # same values and gradients: the same entries kept
    torch.manual_seed(7)
    x = torch.randn(300, 32)
    x[5, :10] = 2.0  # a tie crossing the threshold in a few rows of a large block; the rest stay fast
    x[250, [1, 7]] = x[250].abs().sort().values[24]
    assert abstopk_mod.threshold_keep(x, 8) is not None
    check_abstopk_equal(x, 8)


def test_abstopk_ties_away_from_the_threshold_take_the_fast_path():
    torch.manual_seed(2)
    x = torch.randn(64, 32)
    x[:, :4] = 5.0  # tied, but all kept
    x[:, -4:] = 1e-3  # tied, all dropped
    assert abstopk_mod.threshold_keep(x, 8) is not None
    check_abstopk_equal(x, 8)


@pytest.mark.parametrize("k", [1, 3, 8, 15])
def test_abstopk_heavily_tied_integers(k):
    torch.manual_seed(3)
    x = torch.randint(-3, 4, (200, 16)).float()
    check_abstopk_equal(x, k)


def test_abstopk_all_zero_and_nearly_zero_rows_match_values_and_gradients():
    """Rows with fewer than k nonzeros: the reference keeps (and passes gradient to) its own choice of zeros."""
    check_abstopk_equal(torch.zeros(6, 32), 8)
    torch.manual_seed(4)
    x = torch.randn(40, 32)
    x[::3] = 0.0  # all-zero rows
    x[1::3, 3:] = 0.0  # rows with 3 nonzeros < k
    assert abstopk_mod.threshold_keep(x, 8) is not None  # decided by the fast path, zeros row by row
    check_abstopk_equal(x, 8)
    check_abstopk_equal(-x, 8)  # negative entries and -0.0


def test_abstopk_empty_batch():
    x = torch.randn(0, 5, 16, requires_grad=True)
    out = abstopk_mod.abstopk_threshold(x, 4)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_abstopk_non_finite_inputs():
    torch.manual_seed(5)
    x = torch.randn(8, 16)
    x[0, 3], x[1, 5] = float("inf"), float("-inf")
    assert abstopk_mod.threshold_keep(x, 4) is not None
    check_abstopk_equal(x, 4)
    x[2, 7] = float("nan")
    assert abstopk_mod.threshold_keep(x, 4) is None  # NaN: the reference decides
    fast, ref = abstopk_mod.abstopk_threshold(x, 4), abstopk_mod.abstopk_reference(x, 4)
    assert torch.equal(fast.isnan(), ref.isnan()) and torch.equal(fast.nan_to_num(), ref.nan_to_num())


def test_abstopk_switch_selects_the_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(abstopk_mod, "abstopk_threshold", lambda x, k: calls.append(k) or x)
    x = torch.randn(4, 8)
    abstopk_mod.abstopk(x, 2)
    assert calls == [2]
    monkeypatch.setattr(abstopk_mod, "USE_THRESHOLD_ON_CPU", False)
    assert torch.equal(abstopk_mod.abstopk(x, 2), abstopk_mod.abstopk_reference(x, 2))
    assert calls == [2]


# ---- weight top-k ---------------------------------------------------------------------------------


def project_both(w: torch.Tensor, k: int, min_fan: int = 0, fan_dim: int | None = None) -> torch.Tensor:
    """project_ (fast path where it decides) equals zeroing outside the reference topk_mask; returns it."""
    ref = w.clone().masked_fill_(~topk_mask(w, k, min_fan, fan_dim), 0.0)
    fast = w.clone()
    project_(fast, k, min_fan, fan_dim)
    assert torch.equal(fast, ref)
    return fast


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("frac", [0.9, 0.5, 0.25, 0.02])
@pytest.mark.parametrize(
    "shape,fan_dim", [((2048, 128), None), ((384, 128), 1), ((128, 512), 0), ((300,), None)]
)
def test_weight_topk_fast_path_equals_reference_on_random_weights(dtype, frac, shape, fan_dim):
    torch.manual_seed(6)
    w = torch.randn(*shape, dtype=dtype)
    if fan_dim is not None:
        w.select(1 - fan_dim, 3).mul_(1e-3)  # a weak neuron (row or column) the minimum fan must protect
    k = sparsity.kept_count(frac, w.numel())
    assert threshold_keep_bits(w, k, 4, fan_dim) is not None
    out = project_both(w, k, 4, fan_dim)
    assert int(torch.count_nonzero(out)) == k


@pytest.mark.parametrize("k", [1, 10, 50, 99])
def test_weight_topk_ties_and_zeros(k):
    torch.manual_seed(7)
    tied = torch.randint(-2, 3, (10, 10)).float()  # many ties at nonzero magnitudes, and zeros
    project_both(tied, k)
    project_both(tied, k, 4, 1)
    project_both(torch.zeros(10, 10), k)  # all zero: nothing changes
    project_both(torch.zeros(10, 10), k, 4, 0)
    sparse = torch.zeros(10, 10)
    sparse[0, :3] = torch.tensor([1.0, -2.0, 3.0])  # fewer than k nonzeros: the weights are kept
    project_both(sparse, k)


@pytest.mark.parametrize("zero_frac", [0.6, 0.75])
def test_weight_topk_on_already_sparse_weights(zero_frac):
    """Many exact zeros (the k-th largest is then selected among the nonzeros): same weights, and projecting
    again at the same k changes nothing."""
    torch.manual_seed(9)
    w = torch.randn(256, 64)
    w.view(-1)[torch.randperm(w.numel())[: int(zero_frac * w.numel())]] = 0.0
    k = w.numel() // 4
    assert threshold_keep_bits(w, k) is not None
    once = project_both(w, k)
    assert torch.equal(project_both(once, k), once)
    project_both(once, k, 4, 1)


def test_project_marks_the_weights_modified():
    w = torch.nn.Parameter(torch.randn(32, 16))
    before = w._version
    with torch.no_grad():
        project_(w, 100)
    assert w._version > before and int(torch.count_nonzero(w)) == 100


def test_weight_topk_tie_inside_one_neuron_falls_back():
    w = torch.randn(8, 32)
    w[2, :6] = 50.0  # six tied largest entries in one neuron, four protected: the reference decides
    assert threshold_keep_bits(w, 64, 4, 1) is None
    project_both(w, 64, 4, 1)


def test_weight_topk_non_finite_falls_back():
    w = torch.randn(16, 16)
    w[1, 1] = float("inf")
    assert threshold_keep_bits(w, 20) is None
    project_both(w, 20)


def test_sparsifier_fast_equals_reference_on_a_model(monkeypatch):
    cfg = ModelConfig(vocab_size=64, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=64, n_ctx=16, afrac=0.5)
    torch.manual_seed(8)
    fast, ref = GPT(cfg), GPT(cfg)
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(torch.randn_like(p) * 0.01)
        fast.transformer.wte.weight[:10] = 0.0  # unused tokens: exact zeros
    ref.load_state_dict(fast.state_dict())
    for frac, quirk in [(0.5, 1.0), (0.25, None), (0.05, 0.1)]:
        WeightSparsifier(fast).apply(frac, quirk)
        with monkeypatch.context() as m:
            m.setattr(sparsity, "USE_THRESHOLD_ON_CPU", False)
            WeightSparsifier(ref).apply(frac, quirk)
        for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
            assert torch.equal(a, b), (name, frac)
