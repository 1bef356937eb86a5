"""Float64 numpy transcriptions of gradchain.schedules' formulas, written from their definitions.

Each `ref_<schedule>(...)` takes the schedule's arguments and returns a function of a float64 array of
steps t >= 0 (the 0-based count, as gradchain's schedules receive it), independently of gradchain's code.
"""

import math

import numpy as np


def ref_linear(i, e, n, begin=0):
    return lambda t: np.where(t <= begin, i, np.where(t >= begin + n, e, i + (e - i) * (t - begin) / n))


def ref_polynomial(i, e, p, n, begin=0):
    return lambda t: (i - e) * (1 - np.clip(t - begin, 0, n) / n) ** p + e


def ref_exponential(i, n, rate, begin=0, staircase=False, end=None):
    def f(t):
        k = np.maximum(t - begin, 0) / n
        if staircase:
            k = np.floor(k)
        v = i * rate**k
        if end is not None:
            v = np.maximum(v, end) if rate < 1 else np.minimum(v, end)
        return v

    return f


def ref_piecewise(i, bs):
    def f(t):
        v = np.full_like(t, i)
        for b, s in bs.items():
            v = v * np.where(t >= b, s, 1.0)
        return v

    return f


def ref_cosine(i, n, alpha=0.0, p=1.0):
    return lambda t: i * ((1 - alpha) * (0.5 * (1 + np.cos(np.pi * np.minimum(t, n) / n))) ** p + alpha)


def ref_warmup_cosine(i, peak, w, d, end=0.0, p=1.0):
    def f(t):
        s = np.clip(t - w, 0, d - w)
        decay = end + (peak - end) * (0.5 * (1 + np.cos(np.pi * s / (d - w)))) ** p
        return np.where(t < w, i + (peak - i) * t / max(w, 1), decay)

    return f


def ref_warmup_linear(i, peak, w, d, end=0.0):
    def f(t):
        s = np.clip(t - w, 0, d - w)
        return np.where(t < w, i + (peak - i) * t / max(w, 1), peak + (end - peak) * s / (d - w))

    return f


def ref_warmup_exponential(i, peak, w, n, rate, begin=0, staircase=False, end=None):
    decay = ref_exponential(peak, n, rate, begin, staircase, end)
    return lambda t: np.where(t < w, i + (peak - i) * t / max(w, 1), decay(np.maximum(t - w, 0)))


def ref_warm_restarts(i, t0, mult, vmin=0.0):
    def one(t):
        length, start = t0, 0
        while t >= start + length:  # walk the cycles, as torch's step() does
            start, length = start + length, length * mult
        return vmin + (i - vmin) * (1 + math.cos(math.pi * (t - start) / length)) / 2

    return lambda t: np.array([one(x) for x in t])


def ref_sgdr(cycles):
    def f(t):
        out = np.zeros_like(t)
        start = 0
        for k, c in enumerate(cycles):
            last = k == len(cycles) - 1
            inside = (t >= start) & ((t < start + c["decay_steps"]) | last)
            g = ref_warmup_cosine(
                c["init_value"], c["peak_value"], c["warmup_steps"], c["decay_steps"], c.get("end_value", 0.0)
            )
            out = np.where(inside, g(t - start), out)
            start += c["decay_steps"]
        return out

    return f


def ref_wsd(peak, w, s, d, i=0.0, e=0.0, kind="linear"):
    shapes = {
        "linear": lambda f: 1 - f,
        "cosine": lambda f: 0.5 * (1 + np.cos(np.pi * f)),
        "sqrt": lambda f: 1 - np.sqrt(f),
    }

    def f(t):
        frac = np.clip(t - w - s, 0, d) / d
        return np.where(t < w, i + (peak - i) * t / max(w, 1), e + (peak - e) * shapes[kind](frac))

    return f


def ref_inverse_sqrt(peak, w=0, tau=None):
    tau = max(w, 1) if tau is None else tau
    return lambda t: np.where(t < w, peak * t / max(w, 1), peak / np.sqrt(1 + np.maximum(t - w, 0) / tau))


def ref_power_law(i, tau, alpha):
    return lambda t: i / (1 + t / tau) ** alpha


def ref_inverse_time(i, rate, n=1, staircase=False):
    return lambda t: i / (1 + rate * (np.floor(t / n) if staircase else t / n))


def ref_onecycle(n, peak, pct_start, pct_final, div, final_div, kind, torch_convention):
    """Knot-to-knot interpolation; optax's integer knots or torch's `pct * total - k` knots."""
    init = peak / div
    if kind == "cos":
        b = [0, pct_start * n - 1, n - 1] if torch_convention else [0, int(pct_start * n), n]
        v = [init, peak, init / final_div]
    else:
        b = [0, pct_start * n - 1, pct_final * n - 2, n - 1]
        if not torch_convention:
            b = [0, int(pct_start * n), int(pct_final * n), n]
        v = [init, peak, init, init / final_div]

    def interp(a, z, pct):
        if kind == "cos":
            return z + (a - z) / 2 * (np.cos(np.pi * pct) + 1)
        return a + (z - a) * pct

    def f(t):
        out = np.full_like(t, v[-1])
        for k in reversed(range(len(b) - 1)):
            if b[k + 1] > b[k]:
                inside = (t >= b[k]) & (t < b[k + 1])
                out = np.where(inside, interp(v[k], v[k + 1], (t - b[k]) / (b[k + 1] - b[k])), out)
        return out

    return f


def ref_cyclic(base, top, up, down=None, mode="triangular", gamma=1.0):
    down = up if down is None else down

    def f(t):
        total = up + down
        cycle = np.floor(1 + t / total)
        x = 1 + t / total - cycle
        ratio = up / total
        h = np.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        scale = {"triangular": 1.0, "triangular2": 1 / 2.0 ** (cycle - 1), "exp_range": gamma**t}[mode]
        return base + (top - base) * h * scale

    return f


def ref_join(parts, boundaries):
    def f(t):
        out = parts[0](t)
        for b, g in zip(boundaries, parts[1:], strict=True):
            out = np.where(t < b, out, g(np.maximum(t - b, 0)))
        return out

    return f
