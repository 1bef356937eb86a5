"""float64 numpy transcriptions of gradchain's update rules, one file per family (as gradchain/transforms/;
plus `schedules.py` for gradchain.schedules and `averaging.py`, `loss_scaling.py` for gradchain/wrappers/).

`from references.adam import ref_adam`; the generic run-and-compare helpers stay in tests/reference.py.
"""
