"""Test configuration: 8 simulated CPU devices, so multi-device code is tested on any machine.

XLA reads the flag once, when jax initialises its backends, so it must be set before jax is imported.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
