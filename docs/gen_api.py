"""Write the API reference pages, `docs/api/*.md`, from gradchain's public names.

    python docs/gen_api.py

Each page lists the public names of one area, in source order, as mkdocstrings directives; the site
renders each from its docstring. `tests/test_site.py` checks that the committed pages are what this
script writes, so a new public name cannot miss the reference.
"""

from __future__ import annotations

import inspect
import pathlib
import sys

import gradchain as gc
from gradchain import schedules, tree

API = pathlib.Path(__file__).resolve().parent / "api"

# page file -> (title, introduction, [(module prefix, section title)])
PAGES = {
    "core.md": (
        "Core",
        "The protocol, chains and their compact states, hyperparameters held in the state, and packed execution.",
        [
            ("gradchain._base", "Transformations"),
            ("gradchain._combine", "Chains"),
            ("gradchain._hyperparams", "Hyperparameters"),
            ("gradchain._lift", "Writing element-wise ingredients"),
            ("gradchain._checks", "Checks"),
            ("gradchain._numerics", "Numerics"),
            ("gradchain._packing", "Packed execution"),
        ],
    ),
    "optimizers.md": (
        "Optimizers",
        "Ready-made recipes: each is a `chain` of public ingredients. The [optimizer table](../optimizers.md) "
        "lists their papers, state sizes and optax and `torch.optim` counterparts.",
        [
            ("gradchain.optimizers.sgd", "SGD"),
            ("gradchain.optimizers.rms", "AdaGrad, RMSProp, Adadelta"),
            ("gradchain.optimizers.adam", "Adam"),
            ("gradchain.optimizers.adam_family", "Adam's descendants"),
            ("gradchain.optimizers.sign", "Sign methods"),
            ("gradchain.optimizers.factored", "Memory-light"),
            ("gradchain.optimizers.trust_ratio", "Trust ratios"),
            ("gradchain.optimizers.lbfgs", "L-BFGS"),
        ],
    ),
    "ingredients.md": (
        "Ingredients",
        "The gradient transformations optimizers are built from; combine them with `chain`.",
        [
            ("gradchain.transforms.scaling", "Scaling"),
            ("gradchain.transforms.momentum", "Momentum"),
            ("gradchain.transforms.rms", "Squared-gradient scaling"),
            ("gradchain.transforms.adam", "Adam"),
            ("gradchain.transforms.adam_family", "Adam's descendants"),
            ("gradchain.transforms.sign", "Sign"),
            ("gradchain.transforms.factored", "Factored second moments"),
            ("gradchain.transforms.sm3", "SM3"),
            ("gradchain.transforms.weight_decay", "Weight decay"),
            ("gradchain.transforms.clipping", "Clipping"),
            ("gradchain.transforms.trust_ratio", "Trust ratios"),
            ("gradchain.transforms.normalization", "Normalization"),
            ("gradchain.transforms.asgd", "Averaged SGD"),
            ("gradchain.transforms.noise", "Gradient noise"),
            ("gradchain.transforms.optimistic", "Optimism"),
            ("gradchain.transforms.polyak", "Polyak steps"),
            ("gradchain.transforms.lbfgs", "L-BFGS direction"),
            ("gradchain.transforms.linesearch", "Line searches"),
            ("gradchain.transforms.zoom", "Zoom line search"),
            ("gradchain.transforms.sanitize", "Checks and sanitizing"),
            ("gradchain.transforms.plateau", "Plateaus"),
        ],
    ),
    "wrappers.md": (
        "Wrappers",
        "Transformations that wrap others: parameter groups, accumulation, surviving bad steps, loss "
        "scaling, averaging and monitoring.",
        [
            ("gradchain.wrappers.partition", "Parameter groups"),
            ("gradchain._masking", "Masks and labels by path"),
            ("gradchain.wrappers.accumulate", "Gradient accumulation"),
            ("gradchain.wrappers.safety", "Bad steps"),
            ("gradchain.wrappers.loss_scaling", "Loss scaling"),
            ("gradchain.wrappers.averaging", "Averaging"),
            ("gradchain.wrappers.monitoring", "Monitoring"),
        ],
    ),
    "schedules.md": ("Schedules", "`gc.schedules`: functions of the step count, for any hyperparameter.", []),
    "tree.md": ("Pytree helpers", "`gc.tree`: the pytree utilities gradchain uses, public.", []),
    "interop.md": ("optax interop", "Use optax transformations in gradchain chains, and the reverse.", []),
    "doctor.md": (
        "Training doctor",
        "A learning-rate range test and a reader of loss curves; the [guide](../doctor.md) shows them at work.",
        [
            ("gradchain.doctor.range_test", "Learning-rate range test"),
            ("gradchain.doctor.curves", "Reading a loss curve"),
            ("gradchain.doctor.findings", "What diagnose reports"),
        ],
    ),
    "states.md": (
        "States",
        "The state each transformation keeps. They are pytrees (named tuples) you rarely build by hand; "
        "`gc.hyperparams` and `gc.tree.find_nodes` read them.",
        [],
    ),
}
FLAT = {"schedules.md": schedules, "tree.md": tree}
SINGLE_MODULE = {"interop.md": "gradchain.interop"}


def _is_state(obj) -> bool:
    return inspect.isclass(obj) and obj.__name__.endswith("State") and obj.__name__ != "EmptyState"


def _line(obj) -> int:
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 0


def _qualified(namespace, name: str) -> tuple[str, object]:
    obj = getattr(namespace, name)
    module = getattr(obj, "__module__", None)
    if module is None or not hasattr(sys.modules.get(module), name) or getattr(sys.modules[module], name) is not obj:
        # a type alias: document it where it is defined
        module = next(m for m in ("gradchain._base", namespace.__name__) if hasattr(sys.modules[m], name))
    return f"{module}.{name}", obj


def _directive(path: str) -> str:
    return f"::: {path}\n"


def pages() -> dict[str, str]:
    """Page file name -> its content."""
    public = [_qualified(gc, n) for n in gc.__all__ if n not in {"schedules", "tree"}]
    placed: set[str] = set()
    out = {}
    # A name on a flat page (gc.schedules.Schedule) is documented there only, not again in its module's section.
    on_flat_pages = {_qualified(ns, n)[0] for ns in FLAT.values() for n in ns.__all__}
    for page, (title, intro, sections) in PAGES.items():
        lines = [f"# {title}", "", intro, ""]
        if page in FLAT:
            namespace = FLAT[page]
            items = [_qualified(namespace, n) for n in namespace.__all__]
            lines += [_directive(p) for p, _ in items]
            placed |= {p for p, _ in items}
        elif page == "states.md":
            items = sorted((p for p, obj in public if _is_state(obj)), key=lambda p: p.rsplit(".", 1)[1])
            lines += [_directive(p) for p in items]
            placed |= set(items)
        else:
            for prefix, heading in sections or [(SINGLE_MODULE[page], None)]:
                items = [
                    (p, obj)
                    for p, obj in public
                    if p.rsplit(".", 1)[0] == prefix and not _is_state(obj) and p not in on_flat_pages
                ]
                items.sort(key=lambda item: _line(item[1]))
                if not items:
                    raise SystemExit(f"gen_api: no public names in {prefix} for {page}")
                if heading:
                    lines += [f"## {heading}", ""]
                lines += [_directive(p) for p, _ in items]
                lines.append("")
                placed |= {p for p, _ in items}
        out[page] = "\n".join(lines).rstrip() + "\n"
    missing = sorted(p for p, _ in public if p not in placed)
    if missing:
        raise SystemExit(f"gen_api: public names on no page (add their module to PAGES): {missing}")
    return out


def main() -> None:
    API.mkdir(exist_ok=True)
    for page, text in pages().items():
        (API / page).write_text(text)
        print(f"wrote {API / page}")


if __name__ == "__main__":
    main()
