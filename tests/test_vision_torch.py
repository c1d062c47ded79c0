"""attncore.vision against the torch modules people write for these blocks:
an SE block (hujie's SENet: nn.Linear without bias; torchvision's
SqueezeExcitation: 1x1 convolutions with bias), CBAM (the paper's /
luuuyi's: a shared 1x1-conv MLP, [mean, max] maps through a kxk conv; and
the [max, mean] ChannelPool variant), and PraNet-style reverse attention,
with the same parameters loaded through channel_params / spatial_params.
float32 and float64 modules, NCHW and channels_last tensors, NumPy and
tensor inputs."""
import numpy as np
import pytest

import attncore
from attncore.vision import channel_params, spatial_params

import _vision as V

torch = pytest.importorskip("torch", reason="torch not installed (pip install '.[compare]')")
nn = torch.nn
F = torch.nn.functional

TORCH_DTYPES = {"f32": torch.float32, "f64": torch.float64}


class SELayer(nn.Module):
    """hujie's SENet: avg pool, Linear -> ReLU -> Linear -> Sigmoid, rescale."""

    def __init__(self, C, r=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(C, C // r, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(C // r, C, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation with its defaults (ReLU, Sigmoid)."""

    def __init__(self, C, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(C, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, C, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class ChannelAttention(nn.Module):
    """CBAM's channel module (luuuyi/CBAM.PyTorch)."""

    def __init__(self, C, ratio=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(C, C // ratio, 1, bias=False), nn.ReLU(),
                                nn.Conv2d(C // ratio, C, 1, bias=False))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return self.sigmoid(self.fc(self.avg_pool(x)) + self.fc(self.max_pool(x)))


class SpatialAttention(nn.Module):
    """CBAM's spatial module: cat([mean, max]) (or [max, mean]) -> conv -> sigmoid."""

    def __init__(self, k=7, bias=False, max_first=False):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, k, padding=k // 2, bias=bias)
        self.max_first = max_first
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg = torch.mean(x, dim=1, keepdim=True)
        mx, _ = torch.max(x, dim=1, keepdim=True)
        maps = [mx, avg] if self.max_first else [avg, mx]
        return self.sigmoid(self.conv1(torch.cat(maps, dim=1)))


class CBAM(nn.Module):
    def __init__(self, C, ratio=16, k=7, bias=False, max_first=False):
        super().__init__()
        self.ca = ChannelAttention(C, ratio)
        self.sa = SpatialAttention(k, bias, max_first)

    def forward(self, x):
        x = x * self.ca(x)
        return x * self.sa(x)


def init(module, seed, dtype):
    torch.manual_seed(seed)
    module = module.to(TORCH_DTYPES[V.tag(dtype)])
    with torch.no_grad():      # make the biases and weights non-trivial
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)
    return module.eval()


def run_torch(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).double().numpy()


@pytest.mark.parametrize("shape", [(2, 32, 7, 9), (3, 64, 14, 14), (1, 48, 1, 33)],
                         ids=lambda s: "x".join(map(str, s)))
def test_se_block_hujie(rng, dtype, shape):
    N, C, H, W = shape
    m = init(SELayer(C, r=16), 0, dtype)
    x = V.image(rng, N, C, H, W, dtype)
    p = channel_params(m.fc)
    out = attncore.channel_attention(x, **p)
    V.assert_close(out, run_torch(m, x), dtype, np.abs(x).max())
    # channels-last, NumPy and torch
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    V.assert_close(attncore.channel_attention(xl, **p, layout="NHWC"), out.transpose(0, 2, 3, 1), dtype,
                   np.abs(x).max())


@pytest.mark.parametrize("shape", [(2, 24, 10, 11), (4, 96, 7, 7)], ids=lambda s: "x".join(map(str, s)))
def test_torchvision_squeeze_excitation(rng, dtype, shape):
    N, C, H, W = shape
    m = init(SqueezeExcitation(C, C // 4), 1, dtype)
    x = V.image(rng, N, C, H, W, dtype)
    out = attncore.channel_attention(x, **channel_params(m.fc1, m.fc2))
    V.assert_close(out, run_torch(m, x), dtype, np.abs(x).max())
    # the weights as torch gives them, (out, in, 1, 1) tensors, under no_grad
    with torch.no_grad():
        out2 = attncore.channel_attention(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)
    np.testing.assert_array_equal(out2, out)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("variant", ["paper", "max-first-with-bias"])
def test_cbam_block(rng, dtype, k, variant):
    max_first = variant != "paper"
    m = init(CBAM(32, ratio=8, k=k, bias=max_first, max_first=max_first), 2, dtype)
    x = V.image(rng, 2, 32, 13, 11, dtype)
    cp = channel_params(m.ca.fc)
    sp = spatial_params(m.sa.conv1, order="max,mean" if max_first else "mean,max")
    out = attncore.cbam(x, **cp, **sp)
    ref = run_torch(m, x)
    V.assert_close(out, ref, dtype, np.abs(x).max())
    # the two modules on their own
    x1 = attncore.channel_attention(x, **cp, pooling="avg+max")
    with torch.no_grad():
        xt = torch.from_numpy(x)
        ca_ref = (xt * m.ca(xt)).double().numpy()
    V.assert_close(x1, ca_ref, dtype, np.abs(x).max())
    V.assert_close(attncore.spatial_attention(x, **sp), x * run_torch(m.sa, x), dtype, np.abs(x).max())


@pytest.mark.parametrize("memory", ["contiguous", "channels_last"])
def test_tensors_in_tensors_out(rng, memory):
    m = init(CBAM(16, ratio=4, k=3), 3, np.float32)
    x = torch.from_numpy(V.image(rng, 2, 16, 9, 8, np.float32))
    if memory == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    out = attncore.cbam(x, **channel_params(m.ca.fc), **spatial_params(m.sa.conv1))
    assert isinstance(out, torch.Tensor) and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == (memory == "channels_last")
    with torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-6)
    plan = attncore._engine.plan_info(attncore.cbam, x, **channel_params(m.ca.fc), **spatial_params(m.sa.conv1))
    assert plan["nest"] == ("channels_last" if memory == "channels_last" else "planar")


def test_reverse_attention_pranet_style(rng, dtype):
    """PraNet's reverse attention: x * (1 - sigmoid(upsampled prediction)),
    the prediction expanded over the channels."""
    x = V.image(rng, 2, 32, 22, 22, dtype)
    pred = (rng.standard_normal((2, 1, 22, 22)) * 6).astype(dtype)
    xt, pt = torch.from_numpy(x), torch.from_numpy(pred)
    ref = ((-1 * torch.sigmoid(pt)) + 1).expand(-1, 32, -1, -1).mul(xt).double().numpy()
    out = attncore.reverse_attention(xt, pt)
    assert isinstance(out, torch.Tensor)
    # torch's 1 - sigmoid cancels for large logits; attncore's sigmoid(-l) does not
    V.assert_close(out.numpy(), V.reverse_np(x, pred), dtype, np.abs(x).max())
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=0, atol=4 * np.finfo(dtype).eps * np.abs(x).max())


def test_parameters_that_require_grad_are_refused_with_a_hint(rng):
    m = init(SqueezeExcitation(8, 2), 4, np.float32)
    x = V.image(rng, 1, 8, 4, 4, np.float32)
    with pytest.raises(TypeError, match="no_grad"):
        attncore.channel_attention(x, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)
