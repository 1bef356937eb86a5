"""Ingredients of the SGD variants: Adadelta, Rprop, ASGD, gradient noise, optimism, Polyak steps.

Element-wise rules (`scale_by_adadelta`, `scale_by_rprop`, `scale_by_asgd`,
`scale_by_optimistic_gradient`) are written for one array and lifted by `gradchain._lift.elementwise`.
`add_noise` (one random key split over the leaves, as optax does, so the same key gives optax's
noise) and `scale_by_polyak` (one step size from the global gradient norm) work on the whole tree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain import _packing as packing
from gradchain import tree as tree_util
from gradchain._base import GradientTransformation, Params, Updates
from gradchain._checks import Check, check, check_leaf_dtypes, concrete_float
from gradchain._hyperparams import Hyperparams, HyperparamSpec
from gradchain._lift import Slot, elementwise
from gradchain._numerics import compute_dtype, real_dtype, safe_increment

__all__ = [
    "AddNoiseState",
    "ScaleByAdadeltaState",
    "ScaleByAsgdState",
    "ScaleByOptimisticGradientState",
    "ScaleByPolyakState",
    "ScaleByRpropState",
    "add_noise",
    "asgd_averaged_params",
    "scale_by_adadelta",
    "scale_by_asgd",
    "scale_by_optimistic_gradient",
    "scale_by_polyak",
    "scale_by_rprop",
]


# ---------------------------------------------------------------------------------------------------
# Adadelta


class ScaleByAdadeltaState(NamedTuple):
    """State of `scale_by_adadelta`: step count, $E[g^2]$ (`e_g`), $E[\\Delta x^2]$ (`e_x`), `rho`, `eps`."""

    count: jax.Array
    e_g: Updates
    e_x: Updates
    hyperparams: Hyperparams


def scale_by_adadelta(rho: float | jax.Array = 0.9, eps: float | jax.Array = 1e-6) -> GradientTransformation:
    """Scale by the ratio of the RMS of past updates to the RMS of past gradients (Adadelta).

    $$ E[g^2]_t = \\rho E[g^2]_{t-1} + (1-\\rho) |g_t|^2, \\qquad
       u_t = \\frac{\\sqrt{E[\\Delta x^2]_{t-1} + \\epsilon}}{\\sqrt{E[g^2]_t + \\epsilon}}\\, g_t, \\qquad
       E[\\Delta x^2]_t = \\rho E[\\Delta x^2]_{t-1} + (1-\\rho) |u_t|^2 $$

    from $E[g^2]_0 = E[\\Delta x^2]_0 = 0$ (Zeiler 2012, Algorithm 1). $u_t$ is the update *before*
    any learning rate, as in optax and PyTorch (both accumulate $E[\\Delta x^2]$ of the unscaled
    step). The ratio is formed as in both: $\\sqrt{a + \\epsilon} / \\sqrt{b + \\epsilon}$, then times
    $g$. Complex gradients use $|g|^2$ and keep real statistics (PyTorch treats the real and
    imaginary parts as separate parameters instead; optax squares the complex number).

    Args:
        rho: the decay $\\rho \\in [0, 1)$ (hyperparameter `rho`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`); also sets the size of the very first steps,
            $\\sqrt{\\epsilon / ((1-\\rho) g^2 + \\epsilon)}\\, g$.

    Returns:
        A `GradientTransformation` with `ScaleByAdadeltaState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_adadelta(rho=0.9, eps=1e-6)
        u, state = tx.update({"w": jnp.array([2.0])}, tx.init({"w": jnp.zeros(1)}))
        expected = jnp.sqrt(1e-6) / jnp.sqrt(0.1 * 4.0 + 1e-6) * 2.0
        assert jnp.allclose(u["w"], expected) and jnp.allclose(state.e_g["w"], 0.4)
        ```

    References:
        Zeiler, *ADADELTA: An Adaptive Learning Rate Method*, arXiv:1212.5701, 2012.
    """
    spec = HyperparamSpec("scale_by_adadelta", rho=(rho, Check.UNIT_INTERVAL), eps=(eps, Check.NONNEGATIVE))

    def rule(g, e_g, e_x, *, rho, eps):
        e_g = rho * e_g + (1 - rho) * tree_util.abs_sq(g)
        u = jnp.sqrt(e_x + eps) / jnp.sqrt(e_g + eps) * g
        e_x = rho * e_x + (1 - rho) * tree_util.abs_sq(u)
        return u, (e_g, e_x)

    slots = [Slot("e_g", real=True), Slot("e_x", real=True)]
    return elementwise(rule, ScaleByAdadeltaState, spec, slots=slots)


# ---------------------------------------------------------------------------------------------------
# Rprop


class ScaleByRpropState(NamedTuple):
    """State of `scale_by_rprop`: step count, per-coordinate `step_sizes`, `prev_sign` (int8), etas and bounds."""

    count: jax.Array
    step_sizes: Updates
    prev_sign: Updates
    hyperparams: Hyperparams


def scale_by_rprop(
    learning_rate: float,
    eta_minus: float | jax.Array = 0.5,
    eta_plus: float | jax.Array = 1.2,
    min_step_size: float | jax.Array = 1e-6,
    max_step_size: float | jax.Array = 50.0,
) -> GradientTransformation:
    """Resilient backpropagation: per-coordinate step sizes adapted to sign changes (iRprop-).

    With $s_t = \\operatorname{sign}(g_t)\\, \\operatorname{sign}(\\tilde g_{t-1})$, $\\tilde g_0 = 0$:

    $$ \\Delta_t = \\operatorname{clip}\\Big(\\Delta_{t-1} \\cdot
       \\begin{cases} \\eta^+ & s_t > 0 \\\\ \\eta^- & s_t < 0 \\\\ 1 & s_t = 0 \\end{cases},\\;
       \\Delta_{\\min}, \\Delta_{\\max}\\Big), \\qquad
       \\tilde g_t = \\begin{cases} 0 & s_t < 0 \\\\ g_t & \\text{else} \\end{cases}, \\qquad
       u_t = \\Delta_t \\operatorname{sign}(\\tilde g_t) $$

    from $\\Delta_0$ = `learning_rate`. After a sign change the coordinate does not move and its
    gradient is forgotten, so the next step only grows or keeps its size (Igel & Hüsken's iRprop-,
    the variant of PyTorch and optax). The update points *up* the gradient, as optax's: follow it
    with `scale(-1.0)` (see `gradchain.optimizers.sgd_variants.rprop`).

    The state keeps only the sign of $\\tilde g$ (int8, 1 byte per parameter; PyTorch keeps the
    gradient and optax the last update, which it returns one step late: its first update is 0) and
    compares signs, not the product $g_t \\tilde g_{t-1}$, which underflows to 0 in float32 below
    $|g| \\approx 10^{-23}$. The step size is clipped at every step, the first included, as in
    PyTorch; optax leaves it unclipped while $s_t = 0$, so the two differ only when `learning_rate`
    lies outside $[\\Delta_{\\min}, \\Delta_{\\max}]$. Complex params raise TypeError (the sign of a
    complex number is ambiguous).

    Args:
        learning_rate: the initial step size $\\Delta_0 > 0$ (a number, static: it only fills the
            initial `step_sizes`).
        eta_minus: $\\eta^- \\in [0, 1)$, the shrink factor after a sign change (hyperparameter).
        eta_plus: $\\eta^+ > 0$ (normally $> 1$), the growth factor while the sign holds (hyperparameter).
        min_step_size: $\\Delta_{\\min} \\ge 0$ (hyperparameter).
        max_step_size: $\\Delta_{\\max} \\ge \\Delta_{\\min}$ (hyperparameter).

    Returns:
        A `GradientTransformation` with `ScaleByRpropState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_rprop(learning_rate=0.1)
        state = tx.init({"w": jnp.zeros(2)})
        u, state = tx.update({"w": jnp.array([1.0, -1.0])}, state)   # first step: 0.1 * sign
        u, state = tx.update({"w": jnp.array([3.0, 2.0])}, state)    # same sign / flipped
        assert jnp.allclose(u["w"], jnp.array([0.12, 0.0]))
        assert jnp.allclose(state.step_sizes["w"], jnp.array([0.12, 0.05]))
        ```

    References:
        Riedmiller & Braun, *A direct adaptive method for faster backpropagation learning: the
        RPROP algorithm*, ICNN 1993; Igel & Hüsken, *Improving the Rprop learning algorithm*, 2000.
    """
    owner = "scale_by_rprop"
    if callable(learning_rate):
        raise TypeError(f"{owner}: learning_rate is the initial step size, a number; schedules are not supported")
    check(f"{owner}: learning_rate", learning_rate, Check.POSITIVE)
    initial = concrete_float(learning_rate)
    if initial is None:
        raise TypeError(f"{owner}: learning_rate must be a concrete number, got {learning_rate!r}")
    spec = HyperparamSpec(
        owner,
        eta_minus=(eta_minus, Check.UNIT_INTERVAL),
        eta_plus=(eta_plus, Check.POSITIVE),
        min_step_size=(min_step_size, Check.NONNEGATIVE),
        max_step_size=(max_step_size, Check.NONNEGATIVE),
    )
    low, high = concrete_float(min_step_size), concrete_float(max_step_size)
    if low is not None and high is not None and low > high:
        raise ValueError(f"{owner}: min_step_size ({low}) must be <= max_step_size ({high})")

    def rule(g, step, prev, *, eta_minus, eta_plus, min_step_size, max_step_size):
        direction = jnp.sign(g)
        s = direction * prev
        factor = jnp.where(s > 0, eta_plus, jnp.where(s < 0, eta_minus, 1.0))
        step = jnp.clip(step * factor, min_step_size, max_step_size)
        direction = jnp.where(s < 0, 0.0, direction)
        return step * direction, (step, direction)

    slots = [Slot("step_sizes", init=initial), Slot("prev_sign", dtype=jnp.int8)]
    return elementwise(rule, ScaleByRpropState, spec, slots=slots, complex_ok=False)


# ---------------------------------------------------------------------------------------------------
# ASGD


class ScaleByAsgdState(NamedTuple):
    """State of `scale_by_asgd`: step count, the averaged params `ax`, and the hyperparameters."""

    count: jax.Array
    ax: Params
    hyperparams: Hyperparams


def scale_by_asgd(
    learning_rate: float | jax.Array = 0.01,
    lambd: float | jax.Array = 1e-4,
    alpha: float | jax.Array = 0.75,
    t0: float | jax.Array = 1e6,
) -> GradientTransformation:
    """Averaged SGD's step with decaying step size and weight shrinkage, and the running average of iterates.

    At step $t = 1, 2, \\dots$ with learning rate $\\eta$:

    $$ \\eta_t = \\frac{\\eta}{(1 + \\lambda \\eta (t-1))^{\\alpha}}, \\qquad
       u_t = -\\eta_t\\, (g_t + \\lambda p_{t-1}), \\qquad p_t = p_{t-1} + u_t $$
    $$ \\mu_t = \\frac{1}{\\max(1,\\ t - 1 - t_0)}, \\qquad
       \\bar x_t = \\bar x_{t-1} + \\mu_t (p_t - \\bar x_{t-1}) \\quad (\\bar x_t = p_t \\text{ when } \\mu_t = 1) $$

    This is `torch.optim.ASGD(lr, lambd, alpha, t0)` step for step: $\\bar x_t = p_t$ up to step
    $t_0 + 2$, and from there on $\\bar x_t$ is the mean of $p_{t_0+2}, \\dots, p_t$ (Polyak &
    Juditsky 1992).
    The update already contains the step size and its sign: it is the last ingredient of a chain,
    because the average needs the params that `apply_updates` will produce. PyTorch computes
    $p (1 - \\lambda\\eta_t) - \\eta_t g$; here $p + (-\\eta_t (g + \\lambda p))$: the same number
    up to one rounding per step. Read $\\bar x$ with `asgd_averaged_params(state)`.

    Args:
        learning_rate: $\\eta \\ge 0$ (hyperparameter `learning_rate`).
        lambd: $\\lambda \\ge 0$, the decay term (hyperparameter `lambd`).
        alpha: $\\alpha \\ge 0$, the power of the step-size decay (hyperparameter `alpha`).
        t0: $t_0 \\ge 0$, the step after which averaging starts (hyperparameter `t0`).

    Returns:
        A `GradientTransformation` with `ScaleByAsgdState`; `update` needs the params.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_asgd(learning_rate=1.0, lambd=0.0, t0=0.0)
        params = {"w": jnp.zeros(1)}
        state = tx.init(params)
        for _ in range(3):  # w: 1, 2, 3
            u, state = tx.update({"w": -jnp.ones(1)}, state, params)
            params = gc.apply_updates(params, u)
        assert jnp.allclose(gc.asgd_averaged_params(state)["w"], 2.5)  # t0 = 0: the mean of p_2 and p_3
        ```

    References:
        Polyak & Juditsky, *Acceleration of stochastic approximation by averaging*, SIAM J. Control
        Optim. 1992; Bottou, *Stochastic Gradient Descent Tricks*, 2012 (the step-size schedule).
    """
    spec = HyperparamSpec(
        "scale_by_asgd",
        learning_rate=(learning_rate, Check.NONNEGATIVE),
        lambd=(lambd, Check.NONNEGATIVE),
        alpha=(alpha, Check.NONNEGATIVE),
        t0=(t0, Check.NONNEGATIVE),
    )

    def rule(g, ax, *, learning_rate, lambd, alpha, t0, t, p):
        eta = learning_rate / (1 + lambd * learning_rate * (t - 1)) ** alpha
        u = -eta * (g + lambd * p)
        new_p = p + u
        mu = 1 / jnp.maximum(1.0, t - 1 - t0)
        # PyTorch copies the params while mu is 1 rather than forming ax + (p - ax).
        ax = jnp.where(mu == 1, new_p, ax + mu * (new_p - ax))
        return u, (ax,)

    return elementwise(rule, ScaleByAsgdState, spec, slots=[Slot("ax")], uses_params=True)


def asgd_averaged_params(state: Any) -> Params:
    """The averaged params $\\bar x$ of `scale_by_asgd` (or `asgd`), found anywhere in `state`.

    Returns the average as a tree like the params (unpacked, if the chain packed its state). Before
    the first step it is zeros, as PyTorch's `ax`.

    Args:
        state: an optimizer state holding exactly one `ScaleByAsgdState`.

    Returns:
        The averaged params.

    Raises:
        ValueError: no `ScaleByAsgdState` in the state, or several.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.asgd(learning_rate=0.1)
        params = {"w": jnp.ones(2)}
        state = tx.init(params)
        _, state = tx.update({"w": jnp.ones(2)}, state, params)
        assert gc.asgd_averaged_params(state)["w"].shape == (2,)
        ```
    """
    found = tree_util.find_nodes(state, ScaleByAsgdState)
    if len(found) != 1:
        raise ValueError(f"asgd_averaged_params: expected one ScaleByAsgdState in the state, found {len(found)}")
    return packing.unpack(found[0].ax)


# ---------------------------------------------------------------------------------------------------
# Gradient noise


class AddNoiseState(NamedTuple):
    """State of `add_noise`: step count, the raw PRNG key data `rng_key` (uint32), `eta`, `gamma`."""

    count: jax.Array
    rng_key: jax.Array
    hyperparams: Hyperparams


def _key_data(key: Any) -> jax.Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if isinstance(key, (int, jnp.integer)) and not isinstance(key, bool):
        return jax.random.key_data(jax.random.key(key))
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32:
        return key
    raise TypeError(f"add_noise: key must be an int seed or a jax.random key, got {key!r}")


def add_noise(eta: float | jax.Array = 0.01, gamma: float | jax.Array = 0.55, key: Any = 0) -> GradientTransformation:
    """Add annealed Gaussian noise to the updates.

    $$ u_t = g_t + \\sigma_t\\, \\xi_t, \\qquad \\sigma_t^2 = \\frac{\\eta}{t^{\\gamma}}, \\quad
       t = 1, 2, \\dots, \\qquad \\xi_t \\sim \\mathcal N(0, I) $$

    (the paper's $\\eta / (1 + t)^\\gamma$ with $t$ counted from 0). The random stream is optax's:
    each step splits the key into (next key, sample key), splits the sample key into one key per
    leaf (in `jax.tree.leaves` order) and draws each leaf's noise from it, so `add_noise(eta, gamma,
    key)` adds exactly `optax.add_noise(eta, gamma, key)`'s noise to float32 leaves. Noise for
    float16/bfloat16 leaves is drawn in float32 (optax draws it in the leaf dtype); complex leaves get
    complex noise with $E|\\xi|^2 = 1$. The key is kept in the state as raw `uint32` key data, which
    checkpoints like any array. Not packed: the noise is drawn per leaf.

    Args:
        eta: $\\eta \\ge 0$, the variance at the first step (hyperparameter `eta`).
        gamma: $\\gamma \\ge 0$, the annealing exponent (hyperparameter `gamma`).
        key: an int seed or a `jax.random.key` (typed or raw uint32 data).

    Returns:
        A `GradientTransformation` with `AddNoiseState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.add_noise(eta=0.0, gamma=0.55, key=0)   # no variance: the updates pass through
        u, state = tx.update({"w": jnp.ones(3)}, tx.init({"w": jnp.zeros(3)}))
        assert (u["w"] == 1.0).all() and state.count == 1
        ```

    References:
        Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, *Adding Gradient Noise
        Improves Learning for Very Deep Networks*, arXiv:1511.06807, 2015.
    """
    owner = "add_noise"
    spec = HyperparamSpec(owner, eta=(eta, Check.NONNEGATIVE), gamma=(gamma, Check.NONNEGATIVE))
    key_data = _key_data(key)

    def init(params):
        state = AddNoiseState(jnp.zeros((), jnp.int32), jnp.array(key_data), spec.init())
        return tree_util.place_like(state, params)

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        check_leaf_dtypes(owner, "update", updates, complex_ok=True)
        hp = spec.at(state.hyperparams, state.count)
        count = safe_increment(state.count)
        std = jnp.sqrt(hp.eta / count.astype(hp.eta.dtype) ** hp.gamma)
        next_key, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng_key))
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sample_key, len(leaves))

        def noisy(g, k):
            cdtype = compute_dtype(g.dtype)
            xi = jax.random.normal(k, g.shape, cdtype)
            return (g.astype(cdtype) + std.astype(real_dtype(cdtype)) * xi).astype(g.dtype)

        out = [noisy(g, keys[i]) for i, g in enumerate(leaves)]
        return treedef.unflatten(out), AddNoiseState(count, jax.random.key_data(next_key), hp)

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------------------------------
# Optimism


class ScaleByOptimisticGradientState(NamedTuple):
    """State of `scale_by_optimistic_gradient`: step count, `previous_gradient`, `alpha`, `beta`."""

    count: jax.Array
    previous_gradient: Updates
    hyperparams: Hyperparams


def scale_by_optimistic_gradient(
    alpha: float | jax.Array = 1.0, beta: float | jax.Array = 1.0
) -> GradientTransformation:
    """Optimistic (extrapolated) gradients: the current one plus a multiple of its change.

    $$ u_t = (\\alpha + \\beta)\\, g_t - \\beta\\, g_{t-1}, \\qquad g_0 = g_1 $$

    so the first step is $\\alpha g_1$. With $\\alpha = \\beta = 1$ this is $2 g_t - g_{t-1}$, optimistic
    gradient descent (Daskalakis et al. 2018; the generalised form of Mokhtari et al. 2020). As
    `optax.scale_by_optimistic_gradient`, formula and first step included (optax issue #1082).

    Args:
        alpha: $\\alpha$ (hyperparameter `alpha`), any finite number.
        beta: $\\beta$ (hyperparameter `beta`), any finite number.

    Returns:
        A `GradientTransformation` with `ScaleByOptimisticGradientState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_optimistic_gradient()
        state = tx.init({"w": jnp.zeros(1)})
        u, state = tx.update({"w": jnp.array([1.0])}, state)
        u, state = tx.update({"w": jnp.array([3.0])}, state)
        assert jnp.allclose(u["w"], 5.0)  # 2 * 3 - 1
        ```

    References:
        Daskalakis, Ilyas, Syrgkanis & Zeng, *Training GANs with Optimism*, ICLR 2018; Mokhtari,
        Ozdaglar & Pattathil, *A Unified Analysis of Extra-gradient and Optimistic Gradient Methods
        for Saddle Point Problems*, AISTATS 2020.
    """
    spec = HyperparamSpec("scale_by_optimistic_gradient", alpha=(alpha, Check.FINITE), beta=(beta, Check.FINITE))

    def rule(g, prev, *, alpha, beta, t):
        prev = jnp.where(t == 1, g, prev)
        return (alpha + beta) * g - beta * prev, (g,)

    slots = [Slot("previous_gradient")]
    return elementwise(rule, ScaleByOptimisticGradientState, spec, slots=slots)


# ---------------------------------------------------------------------------------------------------
# Polyak step size


class ScaleByPolyakState(NamedTuple):
    """State of `scale_by_polyak`: the step size of the last step (`step_size`), and the hyperparameters."""

    step_size: jax.Array
    hyperparams: Hyperparams


_POLYAK_VARIANTS = ("sps", "sps+")


def scale_by_polyak(
    f_min: float | jax.Array = 0.0,
    max_learning_rate: float | jax.Array = 1.0,
    eps: float | jax.Array = 0.0,
    variant: str = "sps",
) -> GradientTransformation:
    """Scale the updates by the (stochastic) Polyak step size, from the loss passed as `value=`.

    $$ \\gamma_t = \\min\\Big(\\frac{f(x_t) - f^\\star}{\\|g_t\\|^2 + \\epsilon},\\ \\gamma_{\\max}\\Big),
       \\qquad u_t = \\gamma_t\\, g_t $$

    with $\\|g\\|$ the global norm over all leaves; `variant="sps+"` uses $(f(x_t) - f^\\star)_+$
    (Garrigos et al. 2023). Where $\\|g\\|^2 + \\epsilon = 0$ the step is 0 (the update is 0 anyway;
    this avoids $0/0$). optax instead sets the step to 0 whenever $\\|g\\|^2 + \\epsilon \\le 2.2\\cdot
    10^{-16}$ (float64's machine epsilon), whatever the scale of the problem. The update is along
    $+g$ (no sign flip): follow with `scale_by_learning_rate`. The step size used is kept in the
    state as `step_size` for logging.

    `update(updates, state, params=None, *, value)` needs the loss $f(x_t)$ as the keyword
    argument `value` (inside a `chain`, pass `value=` to the chain's update).

    Args:
        f_min: $f^\\star$, a lower bound of the loss (hyperparameter `f_min`).
        max_learning_rate: $\\gamma_{\\max} \\ge 0$ (hyperparameter `max_learning_rate`).
        eps: $\\epsilon \\ge 0$ (hyperparameter `eps`).
        variant: `"sps"` or `"sps+"` (static).

    Returns:
        A `GradientTransformation` with `ScaleByPolyakState`.

    Example:
        ```python
        import jax.numpy as jnp
        import gradchain as gc

        tx = gc.scale_by_polyak(max_learning_rate=10.0)
        g = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
        u, state = tx.update(g, tx.init(g), value=50.0)  # 50 / 25 = 2
        assert jnp.allclose(u["a"], 6.0) and jnp.allclose(state.step_size, 2.0)
        ```

    References:
        Loizou, Vaswani, Laradji & Lacoste-Julien, *Stochastic Polyak Step-size for SGD: An Adaptive
        Learning Rate for Fast Convergence*, AISTATS 2021; Garrigos, Gower & Schaipp, *Function Value
        Learning: Adaptive Learning Rates Based on the Polyak Stepsize and Function Splitting in ERM*, 2023.
    """
    owner = "scale_by_polyak"
    if variant not in _POLYAK_VARIANTS:
        raise ValueError(f"{owner}: variant must be one of {_POLYAK_VARIANTS}, got {variant!r}")
    spec = HyperparamSpec(
        owner,
        allow_schedules=False,
        f_min=(f_min, Check.FINITE),
        max_learning_rate=(max_learning_rate, Check.NONNEGATIVE),
        eps=(eps, Check.NONNEGATIVE),
    )

    def init(params):
        return tree_util.place_like(ScaleByPolyakState(jnp.zeros((), jnp.float32), spec.init()), params)

    def update(updates, state, params=None, *, value: Any = None, **extra_args):
        del params, extra_args
        if value is None:
            raise TypeError(
                f"{owner} needs the loss: call update(updates, state, params, value=loss) "
                "(the keyword argument `value` is missing)"
            )
        check_leaf_dtypes(owner, "update", updates, complex_ok=True)
        hp = state.hyperparams
        # The squared norm summed directly (as optax does), not squared back from the norm.
        leaves = jax.tree.leaves(updates)
        squares = [jnp.sum(tree_util.abs_sq(g.astype(compute_dtype(g.dtype)))) for g in leaves]
        norm_sq = sum(squares[1:], squares[0]) if squares else jnp.zeros((), jnp.float32)
        dtype = norm_sq.dtype
        gap = jnp.asarray(value).astype(dtype) - hp.f_min.astype(dtype)
        if variant == "sps+":
            gap = jnp.maximum(gap, 0)
        denom = norm_sq + hp.eps.astype(dtype)
        safe = jnp.where(denom > 0, denom, 1)
        step = jnp.where(denom > 0, jnp.minimum(gap / safe, hp.max_learning_rate.astype(dtype)), 0)
        scaled = jax.tree.map(lambda g: (g * step.astype(real_dtype(compute_dtype(g.dtype)))).astype(g.dtype), updates)
        return scaled, ScaleByPolyakState(step.astype(jnp.float32), hp)

    # The global norm of packed buffers is that of the leaves (summed in another order).
    return GradientTransformation(init, packing.mark_packable(update, packing.PackInfo(owner)))
