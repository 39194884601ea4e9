import pytest

from tuneloop import ConfigError, Recipe


def test_default_recipe_is_valid():
    assert Recipe().validate() == Recipe()


def test_validate_reports_every_problem_at_once():
    recipe = Recipe(learning_rate=-1.0, epochs=0, schedule="step", trainable_layers=-2)
    with pytest.raises(ConfigError) as caught:
        recipe.validate()
    problems = caught.value.problems
    assert len(problems) == 4
    assert "The 'learning_rate' parameter must be a float in the range (0, 1]. Got -1.0 instead." in problems
    assert any("'schedule'" in p and "linear, cosine, constant" in p and "'step'" in p for p in problems)
    assert any("'trainable_layers'" in p for p in problems)
    assert "4 problems" in str(caught.value)


def test_bool_is_not_an_int():
    assert any("'epochs'" in p for p in Recipe(epochs=True).problems())


def test_yaml_round_trip():
    recipe = Recipe(learning_rate=3e-4, trainable_layers=2, schedule="cosine")
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe


def test_unknown_recipe_key_is_named():
    with pytest.raises(ConfigError, match="Unknown recipe parameter 'lr'"):
        Recipe.from_dict({"lr": 0.1})
