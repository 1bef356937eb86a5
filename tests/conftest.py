"""Test configuration: 8 simulated CPU devices, so multi-device code is tested on any machine; fixtures.

XLA reads the flag once, when jax initialises its backends, so it must be set before jax is imported
(which is why the fixtures below import what they need when they run, not at the top of this file).
"""

import os

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture
def x64():
    """jax in float64 (`jax_enable_x64`) for the duration of a test, then back to what it was."""
    from reference import x64_enabled

    with x64_enabled():
        yield


@pytest.fixture(scope="session")
def torch():
    """torch, for the tests that compare with it: they skip where torch is not installed, the rest still run.

    Test files never import torch at module level (a missing torch would then take every numpy check of the
    file with it); helpers that need it import it inside, and are only called from tests that take this.
    """
    return pytest.importorskip("torch")
