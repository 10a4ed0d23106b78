"""The fused training quantizers give the values and gradients of autograd through the plain formulation."""
import torch
import torch.nn.functional as F

from cadyq.quant.ops import fake_quant
from cadyq.quant.train_ops import FakeQuantSTE, SelectQuantSTE


def _grads(f, *leaves):
    for t in leaves:
        t.grad = None
    out = f()
    g = torch.Generator().manual_seed(5)
    out.backward(torch.randn(out.shape, generator=g))
    return out.detach(), [t.grad.clone() for t in leaves]


def test_fake_quant_ste_matches_autograd():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 4, 7, 7, generator=g) * 3).requires_grad_()
    a = torch.tensor([2.5], requires_grad=True)
    ref, ref_g = _grads(lambda: fake_quant(x, a, 31), x, a)
    out, out_g = _grads(lambda: FakeQuantSTE.apply(x, a, 31.0), x, a)
    assert torch.equal(ref, out)
    torch.testing.assert_close(out_g[0], ref_g[0])
    torch.testing.assert_close(out_g[1], ref_g[1], rtol=1e-5, atol=1e-4)


def test_select_quant_ste_matches_the_soft_mix():
    """Value: the hard choice; gradients (x, alpha, logits): those of sum_k p_k * fake_quant(x, a_k, s_k)."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(5, 3, 6, 6, generator=g) * 3).requires_grad_()
    alpha = torch.tensor([1.5, 2.5, 3.5], requires_grad=True)
    levels = torch.tensor([7.0, 31.0, 127.0])
    logits = torch.randn(5, 3, generator=g).requires_grad_()

    def mix():
        p = logits.softmax(1)
        hard = F.one_hot(logits.argmax(1), 3).to(x.dtype).view(5, 3, 1, 1, 1)
        q = fake_quant(x.unsqueeze(1), alpha.view(1, -1, 1, 1, 1), levels.view(1, -1, 1, 1, 1))
        soft = (q * p.view(5, 3, 1, 1, 1)).sum(1)
        return (q * hard).sum(1).detach() - soft.detach() + soft

    ref, ref_g = _grads(mix, x, alpha, logits)
    out, out_g = _grads(lambda: SelectQuantSTE.apply(x, alpha, levels, logits.softmax(1), logits.argmax(1)),
                        x, alpha, logits)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    for a, b in zip(out_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def _select_grads(x, alpha, levels, logits):
    return _grads(lambda: SelectQuantSTE.apply(x, alpha, levels, logits.softmax(1), logits.argmax(1)), x, alpha, logits)


def test_c_backward_equals_the_torch_backward(monkeypatch):
    """The C kernel (one pass over x and g) against the torch ops it replaces: NCHW and channels_last
    float32, and bfloat16 (as under autocast), for the selector and the fixed quantizer."""
    from cadyq.quant import train_ops

    if train_ops._lib() is None:  # no C compiler here: the torch ops must take over, with the same results
        assert train_ops.c_quant_backward(torch.ones(2, 3), torch.ones(2, 3), torch.ones(1), torch.ones(1),
                                          torch.ones(2, 1), True) is None
        return
    g = torch.Generator().manual_seed(2)
    alpha = torch.tensor([1.5, 2.5, 3.5], requires_grad=True)
    levels = torch.tensor([7.0, 31.0, 127.0])
    logits = torch.randn(4, 3, generator=g).requires_grad_()
    base = torch.randn(4, 8, 9, 7, generator=g) * 3
    cases = [(base, 1e-5), (base.contiguous(memory_format=torch.channels_last), 1e-5), (base.bfloat16(), 2e-2)]
    for x0, tol in cases:
        assert train_ops.c_quant_backward(x0, x0, alpha, levels, logits.softmax(1), True) is not None
        x = x0.clone().requires_grad_()
        out_c, grads_c = _select_grads(x, alpha, levels, logits)
        a = torch.tensor([2.5], requires_grad=True)
        _, fq_c = _grads(lambda: FakeQuantSTE.apply(x, a, 31.0), x, a)
        with monkeypatch.context() as mp:
            mp.setattr(train_ops, "c_quant_backward", lambda *args: None)  # the torch ops
            out_t, grads_t = _select_grads(x, alpha, levels, logits)
            _, fq_t = _grads(lambda: FakeQuantSTE.apply(x, a, 31.0), x, a)
        assert torch.equal(out_c, out_t)
        assert grads_c[0].stride() == x.stride() and grads_c[0].dtype == x.dtype
        for c, t in zip(grads_c + fq_c, grads_t + fq_t):
            torch.testing.assert_close(c.float(), t.float(), rtol=tol, atol=tol * 10)


def test_channel_std_equals_torch():
    from cadyq.quant.train_ops import channel_std

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 7, 6, generator=g) * 2 + 10  # an offset: the shifted sums must not cancel
    for t, tol in ((x, 1e-5), (x.contiguous(memory_format=torch.channels_last), 1e-5), (x.bfloat16(), 1e-5),
                   (x.bfloat16().contiguous(memory_format=torch.channels_last), 1e-5)):
        got = channel_std(t)
        assert got.dtype == torch.float32 and got.shape == (3, 5)
        torch.testing.assert_close(got, t.float().std(dim=(2, 3)), rtol=tol, atol=tol)
