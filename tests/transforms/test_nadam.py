"""scale_by_nadam (Dozat's momentum schedule) against a numpy transcription and torch.optim.NAdam."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradchain as gc

SHAPES = [(), (7,), (3, 5), (2, 3, 4)]
STEPS = 120


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s) for s in SHAPES] for _ in range(STEPS)]


def _numpy_nadam(grads, b1, b2, eps, psi):
    """Dozat (2016), Algorithm 2 with PyTorch's bias correction of nu, one leaf at a time."""
    out = []
    for leaf in range(len(SHAPES)):
        m = np.zeros(SHAPES[leaf])
        v = np.zeros(SHAPES[leaf])
        prod = 1.0
        leaf_updates = []
        for t, step in enumerate(grads, start=1):
            g = step[leaf]
            mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))
            mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
            prod *= mu_t
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            d = np.sqrt(v / (1 - b2**t)) + eps
            leaf_updates.append((1 - mu_t) / (1 - prod) * g / d + mu_next / (1 - prod * mu_next) * m / d)
        out.append(leaf_updates)
    return out


@pytest.mark.parametrize(("b1", "b2", "eps", "psi"), [(0.9, 0.999, 1e-8, 4e-3), (0.8, 0.99, 1e-3, 0.1)])
def test_matches_numpy_transcription(b1, b2, eps, psi):
    grads = _grads()
    # The library stores hyperparameters as float32 scalars; the reference uses the same rounded
    # values (1 - b2**t is ill-conditioned in b2: a 1e-8 change of b2 moves it by ~1e-5 at t = 100).
    expected = _numpy_nadam(grads, *(float(np.float32(x)) for x in (b1, b2, eps, psi)))
    tx = gc.scale_by_nadam(b1, b2, eps, psi)
    params = [jnp.zeros(s) for s in SHAPES]
    state = tx.init(params)
    update = jax.jit(tx.update)
    # Tolerance relative to each leaf's largest update over the run: a single step's update can be a
    # near-cancellation of the gradient and momentum terms, where float32 has no relative accuracy.
    scales = [max(np.max(np.abs(u)) for u in leaf) for leaf in expected]
    for t, step in enumerate(grads):
        updates, state = update([jnp.asarray(g, jnp.float32) for g in step], state)
        for leaf, u in enumerate(updates):
            np.testing.assert_allclose(np.asarray(u), expected[leaf][t], rtol=0, atol=2e-6 * scales[leaf])
    assert state.mu_product.dtype == jnp.float32 and state.mu_product.shape == ()


@pytest.mark.parametrize("decoupled", [False, True])
def test_optimizer_reproduces_torch_nadam(decoupled, torch):
    grads = _grads(1)
    rng = np.random.default_rng(2)
    p0 = [rng.normal(size=s) for s in SHAPES]
    tparams = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in p0]
    topt = torch.optim.NAdam(
        tparams, lr=1e-2, weight_decay=0.05, momentum_decay=4e-3, decoupled_weight_decay=decoupled, foreach=False
    )
    make = gc.nadamw if decoupled else gc.nadam
    tx = make(1e-2, momentum_decay=4e-3, weight_decay=0.05)
    params = [jnp.asarray(x, jnp.float32) for x in p0]
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in grads:
        for tp, g in zip(tparams, step, strict=True):
            tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
        updates, state = update([jnp.asarray(g, jnp.float32) for g in step], state, params)
        params = gc.apply_updates(params, updates)
    for ours, theirs in zip(params, tparams, strict=True):
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=2e-6 * np.max(np.abs(theirs)))


def test_hyperparams_and_errors():
    state = gc.nadam(1e-3, momentum_decay=4e-3).init({"w": jnp.zeros(2)})
    assert set(gc.hyperparams(state)) == {"b1", "b2", "eps", "momentum_decay", "learning_rate"}
    with pytest.raises(ValueError, match="momentum_decay"):
        gc.scale_by_nadam(momentum_decay=-1.0)
    with pytest.raises(ValueError, match="b1"):
        gc.scale_by_nadam(b1=1.0)
    with pytest.raises(ValueError, match="eps_root"):
        gc.nadam(1e-3, eps_root=1e-8, momentum_decay=4e-3)


def test_bfloat16_params_zero_gradient_is_finite():
    tx = gc.scale_by_nadam()
    params = {"w": jnp.zeros(4, jnp.bfloat16)}
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update({"w": jnp.zeros(4, jnp.bfloat16)}, state)
        assert updates["w"].dtype == jnp.bfloat16
        assert bool(jnp.all(updates["w"] == 0))
