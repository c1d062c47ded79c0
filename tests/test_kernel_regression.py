"""attncore.kernel_regression (Nadaraya-Watson attention pooling): the d2l
example against d2l's NumPy formula and torch, every kernel, layout, mask
and valid_lens form against the pure-Python reference and a float64
formula on every level, accuracy against the expansion trick, special
values, threads and the errors."""
import numpy as np
import pytest

import attncore
from attncore import reference as R

from _softmax_oracle import check, kernel_regression_np

KR = attncore.kernel_regression


@pytest.fixture(params=["f32", "f64"])
def dt(request):
    return {"f32": np.float32, "f64": np.float64}[request.param]


def d2l_data(rng, n_train=50, dtype=np.float32):
    """d2l's data: f(x) = 2 sin(x) + x^0.8 on sorted x in [0, 5) plus noise."""
    x_train = np.sort(rng.random(n_train) * 5)
    y_train = 2 * np.sin(x_train) + x_train ** 0.8 + rng.normal(0.0, 0.5, n_train)
    x_test = np.arange(0, 5, 0.1)
    return x_train.astype(dtype), y_train.astype(dtype), x_test.astype(dtype)


def d2l_formula(x_test, x_train, y_train):
    """d2l's nonparametric attention pooling, written with NumPy:
    softmax(-(X_repeat - x_train)**2 / 2, axis=1) @ y_train."""
    X_repeat = np.repeat(np.asarray(x_test, np.float64), len(x_train)).reshape(-1, len(x_train))
    s = -(X_repeat - np.asarray(x_train, np.float64)) ** 2 / 2
    w = np.exp(s - s.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return w @ np.asarray(y_train, np.float64), w


def test_d2l_example(isa, dt, rng):
    x_train, y_train, x_test = d2l_data(rng, dtype=dt)
    y_hat, w = KR(x_test, x_train, y_train, return_weights=True)
    ref, ref_w = d2l_formula(x_test, x_train, y_train)
    assert y_hat.shape == (50,) and w.shape == (50, 50) and y_hat.dtype == dt
    check(y_hat, ref, dt, scale=4)
    check(w, ref_w, dt)
    check(KR(x_test, x_train, y_train), R.kernel_regression(x_test, x_train, y_train), dt, scale=4)


def test_d2l_example_against_torch(rng):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x_train, y_train, x_test = d2l_data(rng, dtype=np.float64)
    xt, yt, xs = (torch.from_numpy(a) for a in (x_train, y_train, x_test))
    X_repeat = xs.repeat_interleave(len(xt)).reshape((-1, len(xt)))
    ref = torch.matmul(torch.nn.functional.softmax(-(X_repeat - xt) ** 2 / 2, dim=1), yt).numpy()
    np.testing.assert_allclose(KR(x_test, x_train, y_train), ref, rtol=1e-12, atol=1e-12)
    got = KR(xs.float(), xt.float(), yt.float(), bandwidth=0.7)      # tensors in, tensors out
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32


@pytest.mark.parametrize("kernel", ["gaussian", "laplace", "epanechnikov"])
@pytest.mark.parametrize("shapes", [
    ((7,), (9,), (9,)),                            # d2l: scalar points and targets
    ((7,), (9,), (9, 3)),                          # vector targets
    ((7, 2), (9, 2), (9,)),                        # vector points, scalar targets
    ((2, 7, 3), (2, 9, 3), (2, 9, 2)),             # batched
    ((7, 3), (2, 9, 3), (1, 9, 2)),                # batch dims broadcast
    ((2, 1, 5, 1), (1, 3, 9, 1), (2, 3, 9)),       # scalar targets per batch element
])
def test_layouts_and_kernels_match_reference(isa, dt, rng, kernel, shapes):
    sq, sk, sy = shapes
    xq = (rng.standard_normal(sq)).astype(dt)
    xk = (rng.standard_normal(sk)).astype(dt)
    y = rng.standard_normal(sy).astype(dt)
    h = 0.8 if kernel != "epanechnikov" else 2.5
    out, w = KR(xq, xk, y, h, kernel=kernel, return_weights=True)
    ref, ref_w = R.kernel_regression(xq, xk, y, h, kernel=kernel, return_weights=True)
    assert out.shape == ref.shape and w.shape == ref_w.shape
    check(out, ref, dt, scale=3)
    check(w, ref_w, dt)
    np.testing.assert_array_equal(KR(xq, xk, y, h, kernel=kernel), out)   # weights change nothing


@pytest.mark.parametrize("Lk", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 255, 256, 257, 513, 1100])
def test_key_counts_across_block_edges(isa, dt, rng, Lk):
    xq = rng.random((2, 5, 2)).astype(dt) * 4
    xk = rng.random((2, Lk, 2)).astype(dt) * 4
    y = rng.standard_normal((2, Lk, 3)).astype(dt)
    for kernel in ("gaussian", "laplace", "epanechnikov"):
        check(KR(xq, xk, y, 0.6, kernel=kernel), kernel_regression_np(xq, xk, y, 0.6, kernel)[0], dt, scale=3)


def test_online_softmax_rescales_across_blocks(isa, dt):
    # keys ordered far to near: every key block raises the running max
    xk = np.linspace(50, 0, 2000).astype(dt)
    y = np.cos(xk).astype(dt)
    xq = np.array([0.0, 25.0, 49.0], dt)
    check(KR(xq, xk, y, 0.5), kernel_regression_np(xq, xk, y, 0.5)[0], dt, scale=3)


def test_masks_and_valid_lens(isa, dt, rng):
    xq = rng.standard_normal((3, 6, 2)).astype(dt)
    xk = rng.standard_normal((3, 40, 2)).astype(dt)
    y = rng.standard_normal((3, 40, 2)).astype(dt)
    mb = rng.random((6, 40)) > 0.4
    mf = rng.standard_normal((3, 1, 40)).astype(dt)
    for kernel in ("gaussian", "laplace"):
        check(KR(xq, xk, y, kernel=kernel, attn_mask=mb), R.kernel_regression(xq, xk, y, kernel=kernel, attn_mask=mb), dt, scale=3)
        check(KR(xq, xk, y, kernel=kernel, attn_mask=mf), R.kernel_regression(xq, xk, y, kernel=kernel, attn_mask=mf), dt, scale=3)
    for vl in (np.array([0, 17, 40]), rng.integers(0, 41, (3, 6)), np.int64(5)):
        got = KR(xq, xk, y, 1.5, kernel="epanechnikov", valid_lens=vl, attn_mask=mb)
        check(got, R.kernel_regression(xq, xk, y, 1.5, kernel="epanechnikov", valid_lens=vl, attn_mask=mb), dt, scale=3)
        got = KR(xq, xk, y, valid_lens=vl)
        check(got, kernel_regression_np(xq, xk, y, valid_lens=vl)[0], dt, scale=3)
    # d2l-style per-query key sets: queries (n,), keys (n, m) -> (n, 1, 1) and (n, m, 1)
    q, k = rng.random(4), rng.random((4, 6))
    v = np.sin(k)
    got = KR(q[:, None, None], k[..., None], v)
    w = np.exp(-(q[:, None] - k) ** 2 / 2)
    np.testing.assert_allclose(got[:, 0], (w / w.sum(1, keepdims=True) * v).sum(1), rtol=1e-12)


def test_special_values(isa, dt):
    xk = np.array([0.0, 1.0, 2.0, 3.0], dt)
    y = np.array([1.0, 2.0, 3.0, 4.0], dt)
    out = KR(np.array([np.nan, 1.0], dt), xk, y)
    assert np.isnan(out[0]) and np.isfinite(out[1])
    out = KR(np.array([1.0], dt), np.array([0.0, np.nan, 2.0], dt), y[:3])
    assert np.isnan(out).all()
    out = KR(np.array([1.0], dt), np.array([0.0, np.nan, 2.0], dt), y[:3], attn_mask=np.array([True, False, True]))
    check(out, [2.0], dt)                                           # a masked NaN key is not read
    out, w = KR(np.array([1.0, 2.0], dt), xk, y, valid_lens=np.array([0, 4]), return_weights=True)
    assert out[0] == 0 and (w[0] == 0).all()                        # nothing visible: zeros
    out = KR(np.array([10.0], dt), xk, y, 1.0, kernel="epanechnikov")
    assert out[0] == 0                                               # no key within h
    out = KR(np.array([1e4], dt), xk, y, 1.0)                        # far away: scores ~ -5e7
    check(out, kernel_regression_np([1e4], xk, y, 1.0)[0], dt)
    assert KR(np.zeros(3, dt), np.zeros(0, dt), np.zeros(0, dt)).tolist() == [0, 0, 0]
    assert KR(np.zeros(0, dt), xk, y).shape == (0,)
    out = KR(np.array([1.0], dt), np.array([0.0, 1.0], dt), np.array([np.inf, 1.0], dt))
    assert np.isinf(out[0])


def test_accuracy_difference_first_beats_the_expansion_trick(rng):
    """The issue's point: -(x - x_i)^2 / 2h^2 taken directly. The old trick
    (q = [x, 1], k = [x_i, -x_i^2/2] through SDPA) cancels |x|^2 against
    2 x x_i; attncore's float32 result is several times closer to float64."""
    x_train = np.sort(rng.random(1000) * 5 + 20).astype(np.float32)   # offset: larger |x|
    y_train = (2 * np.sin(x_train) + x_train ** 0.8).astype(np.float32)
    x_test = np.linspace(20, 25, 400).astype(np.float32)
    h = 0.2
    exact = kernel_regression_np(x_test, x_train, y_train, h)[0]
    ours = np.abs(KR(x_test, x_train, y_train, h) - exact).max()
    q = np.stack([x_test, np.ones_like(x_test)], -1)[None]
    k = np.stack([x_train, -x_train ** 2 / 2], -1)[None]
    trick = attncore.scaled_dot_product_attention(q, k, y_train[None, :, None], scale=1 / h ** 2)[0, :, 0]
    trick_err = np.abs(trick - exact).max()
    assert ours * 4 < trick_err, (ours, trick_err)
    assert ours < 2e-5


def test_bitwise_independent_of_thread_count(isa, dt, rng):
    xq = rng.random((3, 50, 2)).astype(dt)
    xk = rng.random((3, 700, 2)).astype(dt)
    y = rng.standard_normal((3, 700, 4)).astype(dt)
    for kernel in ("gaussian", "laplace", "epanechnikov"):
        res = [KR(xq, xk, y, 0.3, kernel=kernel, return_weights=True, num_threads=n) for n in (1, 2, 3)]
        for r in res[1:]:
            np.testing.assert_array_equal(r[0], res[0][0])
            np.testing.assert_array_equal(r[1], res[0][1])


def test_half_dtypes(rng):
    x_train, y_train, x_test = d2l_data(rng, dtype=np.float16)
    got = KR(x_test, x_train, y_train)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), d2l_formula(x_test, x_train, y_train)[0], atol=5e-3)


def test_errors_name_arguments_and_shapes():
    x, y = np.zeros(5), np.zeros(5)
    with pytest.raises(ValueError, match="same feature size"):
        KR(np.zeros((3, 2)), np.zeros((5, 3)), y)
    with pytest.raises(ValueError, match="same feature size"):
        KR(np.zeros(3), np.zeros((5, 2)), y)                 # 1-D x is d=1
    with pytest.raises(ValueError, match=r"y of shape \(4,\) is read as \(\.\.\., Lk\): scalar "
                                         r"targets, so it has 4 points, but x_key of shape \(5,\) has Lk=5"):
        KR(x, x, np.zeros(4))
    # a batch of scalar targets against an unbatched 1-D x_key reads as (Lk, dy): the message
    # says how it was read and how to write the other reading
    with pytest.raises(ValueError, match=r"read as \(\.\.\., Lk, dy\): vector targets.*"
                                         r"has 3 points.*Lk=5.*x_key\[None\]"):
        KR(np.zeros(2), x, np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"y has shape \(5,\).*batch dims of y must all be present"):
        KR(np.zeros((2, 3, 1)), np.zeros((2, 5, 1)), y)      # missing batch dim: never guessed
    with pytest.raises(ValueError, match="do not broadcast"):
        KR(np.zeros((2, 3, 1)), np.zeros((3, 5, 1)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="scalar points or"):
        KR(np.float64(1.0), x, y)
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        KR(x, x, y, 0.0)
    with pytest.raises(ValueError, match="bandwidth must be a finite number > 0"):
        KR(x, x, y, np.inf)
    with pytest.raises(TypeError, match="bandwidth must be a real number"):
        KR(x, x, y, "1")
    with pytest.raises(ValueError, match="kernel must be one of gaussian, laplace, epanechnikov"):
        KR(x, x, y, kernel="cosine")
    with pytest.raises(ValueError, match="epanechnikov kernel does not have"):
        KR(x, x, y, kernel="epanechnikov", attn_mask=np.zeros(5))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4,\) does not broadcast to the weights' shape \(5, 5\)"):
        KR(x, x, y, attn_mask=np.ones(4, bool))
    with pytest.raises(TypeError, match="mixed dtypes"):
        KR(x.astype(np.float32), x, y)
    with pytest.raises(ValueError, match=r"valid_lens must be in \[0, Lk=5\]"):
        KR(x, x, y, valid_lens=6)
    with pytest.raises(ValueError, match=r"valid_lens has shape \(2, 5\); it must be a scalar, the batch shape \(\)"):
        KR(x, x, y, valid_lens=np.ones((2, 5), int))
    with pytest.raises(ValueError, match="does not match the batch"):
        KR(x, x, y, valid_lens=np.ones(4, int))
    with pytest.raises(TypeError, match="return_weights must be True or False"):
        KR(x, x, y, return_weights=1)


def test_valid_lens_that_fit_both_readings_of_an_unbatched_query_are_refused():
    # x_query (Lq, d) without batch dims, x_key / y with B == Lq: a (3,) is one length
    # per batch element as well as one per query; it used to be read per batch element
    xq = np.array([[0.0], [1.0], [2.0]])
    xk = np.broadcast_to(np.arange(5.0)[:, None], (3, 5, 1))
    y = np.broadcast_to(np.arange(5.0), (3, 5))
    vl = np.array([1, 3, 5])
    with pytest.raises(ValueError, match=r"valid_lens of shape \(3,\) could be read two ways.*"
                                         r"valid_lens\[\.\.\., None\].*np.broadcast_to"):
        KR(xq, xk, y, valid_lens=vl)
    with pytest.raises(ValueError, match="could be read two ways"):
        KR(np.arange(3.0), xk, y, valid_lens=vl)            # 1-D scalar points too
    # the two spellings the message offers, each checked against the reference
    per_batch, per_query = vl[:, None], np.broadcast_to(vl, (3, 3))
    for lens in (per_batch, per_query):
        check(KR(xq, xk, y, valid_lens=lens), R.kernel_regression(xq, xk, y, valid_lens=lens),
              np.float64)
    assert not np.allclose(KR(xq, xk, y, valid_lens=per_batch), KR(xq, xk, y, valid_lens=per_query))
    # unambiguous shapes stay accepted: B != Lq, a batched query, size 1
    KR(xq, xk[:2], y[:2], valid_lens=np.array([1, 3]))
    KR(np.broadcast_to(xq, (3, 3, 1)), xk, y, valid_lens=vl)
    KR(xq, xk, y, valid_lens=np.array([2]))


def test_misaligned_valid_lens_and_mask_are_copied(rng):
    xq, xk = rng.random((2, 3, 1)), rng.random((2, 9, 1))
    y = rng.standard_normal((2, 9))
    raw = np.zeros(2 * 3 * 8 + 1, np.uint8)
    vl = np.frombuffer(raw.data, np.int64, count=6, offset=1).reshape(2, 3)
    vl[...] = [[1, 5, 9], [0, 2, 3]]
    check(KR(xq, xk, y, valid_lens=vl), R.kernel_regression(xq, xk, y, valid_lens=vl.copy()), np.float64)


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov"])
def test_bandwidth_whose_inverse_square_overflows_is_an_error(kernel):
    """Below 2^-511, 1/h^2 overflows float64 and a query on a key would get
    0 x inf = NaN: a ValueError that says so; 2^-511 itself works (the
    query on key 1 gets its target), and laplace takes any h > 0."""
    xk = np.array([0.0, 1.0, 2.0]); y = np.array([10.0, 20.0, 30.0]); xq = np.array([1.0])
    with pytest.raises(ValueError, match=r"bandwidth .* below 2\*\*-511"):
        attncore.kernel_regression(xq, xk, y, 1e-155, kernel=kernel)
    np.testing.assert_array_equal(attncore.kernel_regression(xq, xk, y, 2.0 ** -511, kernel=kernel), [20.0])
    np.testing.assert_array_equal(attncore.kernel_regression(xq, xk, y, 1e-300, kernel="laplace"), [20.0])
    np.testing.assert_array_equal(attncore.kernel_regression(xq, xk, y, 2.0 ** -1021, kernel="laplace"),
                                  [20.0])
    with pytest.raises(ValueError, match=r"bandwidth .* below 2\*\*-1021"):
        attncore.kernel_regression(xq, xk, y, 5e-324, kernel="laplace")
