"""Distillation losses (pure tensor functions) and the cache's top-k -> dense reconstruction."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill.cache.format import dense_log_probs, encode_distributions  # noqa: E402
from distill.kd.losses import (  # noqa: E402
    distillation_divergence,
    js_divergence,
    kd_token_losses,
    kl_divergence,
)


def log_softmax(shape, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(*shape, generator=g), dim=-1)


def test_kl_of_identical_distributions_is_zero_and_positive_otherwise():
    p, q = log_softmax((4, 8, 256), 0), log_softmax((4, 8, 256), 1)
    torch.testing.assert_close(kl_divergence(p, p), torch.zeros(4, 8), atol=1e-6, rtol=0)
    assert (kl_divergence(p, q) > 0).all()
    assert not torch.allclose(kl_divergence(p, q), kl_divergence(q, p))  # KL is not symmetric
    for kind in ("kl", "rkl", "jsd"):
        torch.testing.assert_close(distillation_divergence(kind, p, p, 2.0), torch.zeros(4, 8), atol=1e-5, rtol=0)


def test_kl_ignores_zero_probability_bins():
    p = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))  # log 0 = -inf: 0 * log 0 counts as 0
    q = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    assert kl_divergence(p, q).item() == pytest.approx(math.log(2.0))


def test_jsd_is_symmetric_and_bounded_by_log2():
    p, q = log_softmax((16, 8, 256), 2, scale=8.0), log_softmax((16, 8, 256), 3, scale=8.0)
    torch.testing.assert_close(js_divergence(p, q), js_divergence(q, p))
    assert (js_divergence(p, q) >= 0).all() and (js_divergence(p, q) <= math.log(2.0) + 1e-6).all()
    disjoint_p = torch.log(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    disjoint_q = torch.log(torch.tensor([0.0, 0.0, 0.5, 0.5]))
    assert js_divergence(disjoint_p, disjoint_q).item() == pytest.approx(math.log(2.0))  # the bound is reached


@pytest.mark.parametrize("kind", ["kl", "rkl", "jsd"])
def test_gradients_reach_the_student_only(kind):
    teacher = log_softmax((2, 8, 256), 4)
    student = torch.randn(2, 8, 256, requires_grad=True)
    gt = torch.randint(0, 256, (2, 8))
    sums = kd_token_losses(student, teacher, gt, kind, temperature=2.0, alpha=0.3)
    sums.loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert sums.tokens.item() == 16
    # the objective is exactly alpha * CE + (1 - alpha) * T^2 * D
    assert sums.loss.item() == pytest.approx(0.3 * sums.ce.item() + 0.7 * sums.divergence.item(), rel=1e-5)


def test_t_squared_keeps_the_soft_gradient_scale():
    """d/dz of T^2 KL(p_T || q_T) = T (q_T - p_T) -> (z_s - z_t) / N at large T (Hinton et al.):
    the same for every large T. Without the T^2 factor it would shrink as 1 / T^2."""
    n = 16
    z_t = torch.randn(1, 1, n, generator=torch.Generator().manual_seed(5))
    z_s = torch.randn(1, 1, n, generator=torch.Generator().manual_seed(6))
    z_t, z_s = z_t - z_t.mean(), z_s - z_s.mean()
    teacher = torch.log_softmax(z_t, -1)  # the cache stores log-probabilities, not logits
    grads = {}
    for t in (50.0, 200.0):
        s = z_s.clone().requires_grad_(True)
        distillation_divergence("kl", teacher, s, t).sum().backward()
        grads[t] = s.grad
    expected = (z_s - z_t) / n
    for t, g in grads.items():
        torch.testing.assert_close(g, expected, atol=2e-3 * expected.abs().max().item() + 1e-4, rtol=0.05)
    torch.testing.assert_close(grads[50.0], grads[200.0], rtol=0.05, atol=1e-4)
    # the divergence itself is T^2 times the unscaled one
    t = 3.0
    raw = kl_divergence(torch.log_softmax(teacher / t, -1), torch.log_softmax(z_s / t, -1))
    torch.testing.assert_close(distillation_divergence("kl", teacher, z_s, t), t * t * raw)


def test_temperature_one_kl_matches_torch_kl_div():
    teacher, student = log_softmax((3, 8, 256), 7), torch.randn(3, 8, 256)
    ours = distillation_divergence("kl", teacher, student, 1.0)
    ref = torch.nn.functional.kl_div(torch.log_softmax(student, -1), teacher, log_target=True,
                                     reduction="none").sum(-1)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_agreement_and_accuracy_counts():
    teacher = torch.full((1, 2, 4), -10.0)
    teacher[0, 0, 1] = teacher[0, 1, 3] = 0.0
    student = torch.zeros(1, 2, 4)
    student[0, 0, 1] = 5.0  # agrees with the teacher on token 0
    student[0, 1, 2] = 5.0  # not on token 1, but hits the ground truth there
    sums = kd_token_losses(student, teacher, torch.tensor([[0, 2]]), "kl", 1.0, 0.5)
    assert sums.agree.item() == 1 and sums.correct.item() == 1


def test_top_k_reconstruction_keeps_the_stored_bins_and_spreads_the_rest():
    lp = log_softmax((5, 8, 256), 8, scale=4.0).numpy()
    full = dense_log_probs(encode_distributions(lp, None), 256)
    np.testing.assert_allclose(np.exp(full), np.exp(lp), atol=2e-3)
    stored = encode_distributions(lp, 16)
    assert stored["topk_bins"].dtype == np.uint8 and stored["topk_log_probs"].dtype == np.float16
    dense = dense_log_probs(stored, 256)
    np.testing.assert_allclose(np.exp(dense).sum(-1), 1.0, rtol=1e-5)
    top = np.argsort(-lp, -1)[..., :16]
    np.testing.assert_allclose(np.take_along_axis(dense, top, -1), np.take_along_axis(lp, top, -1), atol=2e-2)
    rest = np.ones_like(lp, bool)
    np.put_along_axis(rest, top, False, -1)
    tail = np.exp(dense)[rest].reshape(5, 8, 240)
    np.testing.assert_allclose(tail, tail[..., :1].repeat(240, -1), rtol=1e-5)  # uniform residual
    np.testing.assert_allclose(tail.sum(-1), 1 - np.exp(np.take_along_axis(lp, top, -1)).sum(-1), atol=2e-3)
