import pytest
from jsonargparse import ArgumentError

from arrcoc.config import build_model


def test_builtin_names_and_fields():
    model = build_model({"model": {"scorers": ["participatory", "propositional"], "min_tokens": 16,
                                   "max_tokens": 300, "summary_grid": 2}})
    assert model.scorer_names == ["participatory", "propositional"]
    assert model.allocator.bounds.tolist() == [16, 300] and model.summary.num_tokens == 4


def test_unknown_key_and_wrong_type_name_the_key():
    with pytest.raises(ArgumentError, match="scorerz"):
        build_model({"model": {"scorerz": ["propositional"]}})
    with pytest.raises(ArgumentError, match="model.min_tokens"):
        build_model({"model": {"min_tokens": "many"}})
    with pytest.raises(ValueError, match="no 'model' section"):
        build_model({"modle": {}})


def test_bad_class_path_is_reported():
    with pytest.raises(ArgumentError, match="no_such_module"):
        build_model({"model": {"scorers": [{"class_path": "no_such_module.Scorer"}]}})
