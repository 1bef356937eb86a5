"""The old names of the states renamed to optax's still import, warn, and are the new classes."""

import importlib

import pytest

import gradchain as gc

RENAMED = {
    "ScaleByLbfgsState": "ScaleByLBFGSState",
    "ScaleByAdadeltaState": "ScaleByAdaDeltaState",
    "WeightDecayState": "AddDecayedWeightsState",
    "ScaleByFactoredRmsState": "FactoredState",
}


@pytest.mark.parametrize("module", ["gradchain", "gradchain.transforms"])
@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
def test_old_name_warns_and_is_the_new_class(module, old, new):
    namespace = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use {new}"):
        cls = getattr(namespace, old)
    assert cls is getattr(gc, new)
    assert new in namespace.__all__ and old not in namespace.__all__


def test_from_import_of_an_old_name_warns():
    with pytest.warns(DeprecationWarning, match="AddDecayedWeightsState"):
        from gradchain import WeightDecayState  # noqa: F401


def test_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        gc.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_name"):
        gc.transforms.no_such_name  # noqa: B018
