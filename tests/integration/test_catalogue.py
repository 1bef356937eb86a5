"""The optimizer table in the docs is generated, complete and current."""

import importlib.util
import pathlib

import gradchain as gc

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_optimizers", DOCS / "gen_optimizers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_optimizers_page_is_what_the_generator_writes():
    gen = _generator()
    assert (DOCS / "optimizers.md").read_text() == gen.render(), "run `python docs/gen_optimizers.py`"


def test_every_public_optimizer_is_in_the_table():
    gen = _generator()
    listed = {e.name for e in gen.ENTRIES}
    # Optimizers are the public names in the `# optimizers` block of gradchain.__all__.
    source = (pathlib.Path(gc.__file__).parent / "__init__.py").read_text()
    block = source.split("    # optimizers\n", 1)[1].split("    #", 1)[0]
    optimizers = {line.strip().strip('",') for line in block.splitlines() if line.strip().startswith('"')}
    assert optimizers <= set(gc.__all__)
    assert optimizers - listed == set(), "add them to ENTRIES in docs/gen_optimizers.py"


def test_state_sizes_are_measured():
    gen = _generator()
    # Two float32 moments per parameter, plus a few scalars (step count, hyperparameters) per leaf.
    adam = gen.state_bytes_per_param(lambda: gc.adam(1e-3), (256, 256))
    assert 8 < adam < 8 + 100 / 65536
    # Factored second moments: rows + columns only.
    adafactor = gen.state_bytes_per_param(lambda: gc.adafactor(1e-3), (256, 256))
    assert 2 * 256 * 4 / 65536 < adafactor < 0.05
