"""The package faces: ``import topoland as tl``, the subpackages' re-exports, docstrings, and
the topology estimator under sklearn's own checks."""
import importlib

import pytest


@pytest.mark.parametrize("package", ["topoland", "topoland.landscape", "topoland.plots",
                                     "topoland.topology", "topoland.analysis"])
def test_every_exported_name_resolves(package):
    mod = importlib.import_module(package)
    assert mod.__all__
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
        assert name in dir(mod)
    with pytest.raises(AttributeError, match="no attribute"):
        getattr(mod, "no_such_name")


def test_main_api_from_the_package():
    import topoland as tl
    from topoland.sampling.sampler import jump_and_retrain
    from topoland.topology import topology_of_samples
    assert tl.jump_and_retrain is jump_and_retrain and tl.topology_of_samples is topology_of_samples
    assert tl.DataSplits.__name__ == "DataSplits" and callable(tl.random_plane)


def test_surface_functions_keep_their_docstrings():
    import topoland as tl
    for fn in (tl.line, tl.plane, tl.interpolate):
        assert fn.__doc__ and "chunk_points" in fn.__doc__ and "evaluator" in fn.__doc__, fn


def test_loss_topology_is_an_sklearn_estimator():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.estimator_checks import (check_get_params_invariance,
                                                check_no_attributes_set_in_init,
                                                check_parameters_default_constructible,
                                                check_set_params)
    from sklearn.utils.validation import check_is_fitted

    from topoland.topology import LossTopology
    est = LossTopology(k=7)
    for check in (check_no_attributes_set_in_init, check_parameters_default_constructible,
                  check_get_params_invariance, check_set_params):
        check("LossTopology", clone(est))
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
    with pytest.raises(NotFittedError):
        est.transform([])
    fitted = clone(est).fit([])
    check_is_fitted(fitted)
    assert fitted.options_["k"] == 7


def test_loss_pattern_fitter_is_an_sklearn_estimator():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.estimator_checks import (check_get_params_invariance,
                                                check_no_attributes_set_in_init,
                                                check_parameters_default_constructible,
                                                check_set_params)
    from sklearn.utils.validation import check_is_fitted

    from topoland.landscape import LossPatternFitter
    est = LossPatternFitter(steps=3, seed=1)
    for check in (check_no_attributes_set_in_init, check_parameters_default_constructible,
                  check_get_params_invariance, check_set_params):
        check("LossPatternFitter", clone(est))
    assert clone(est).get_params()["steps"] == 3
    with pytest.raises(NotFittedError):
        check_is_fitted(est)
