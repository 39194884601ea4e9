"""next_recipe(): the first move of each rule, its reason, caps, validity, and never repeating a run recipe."""

import pytest

from tuneloop.config import Recipe
from tuneloop.tasks.image import IMAGE_FAMILY, IMAGE_SCRATCH_FAMILY
from tuneloop.tasks.table import TABLE_FAMILY
from tuneloop.tasks.text import TEXT_FAMILY
from tuneloop.training.loop import EpochRecord
from tuneloop.tuning import policy
from tuneloop.tuning.diagnose import LABELS, Diagnosis, diagnose
from tuneloop.tuning.policy import MAX_EPOCHS, MIN_LEARNING_RATE, TEXT_RULES, learning_rate_cap, recipe_key

FAMILIES = {"image": IMAGE_FAMILY, "image-scratch": IMAGE_SCRATCH_FAMILY, "tabular": TABLE_FAMILY}


def next_recipe(diagnosis, recipe, tried, **options):
    """The policy's next move, for a text encoder unless ``family`` says otherwise."""
    return policy.next_recipe(diagnosis, recipe, tried, **{"family": TEXT_FAMILY, **options})


def explore(recipe, tried, **options):
    return policy.explore(recipe, tried, **{"family": TEXT_FAMILY, **options})


def untried(recipe, tried, **options):
    return policy.untried(recipe, tried, **{"family": TEXT_FAMILY, **options})


def diagnosis(label: str, finding: str = "what the curves showed", best_epoch: int = 2) -> Diagnosis:
    return Diagnosis(label, {"best_epoch": best_epoch}, f"{finding}: {label}", finding)


def first(label: str, recipe: Recipe, tried=(), num_layers: int | None = 6, **kwargs):
    decision = next_recipe(diagnosis(label, **kwargs), recipe, tried, num_layers=num_layers)
    assert decision is not None
    return decision


def walk(label: str, recipe: Recipe, num_layers: int | None = 6, best_epoch: int = 2):
    """Every decision for one diagnosis of one recipe, feeding each proposal back as tried, until None."""
    tried, decisions = [], []
    while (decision := next_recipe(diagnosis(label, best_epoch=best_epoch), recipe, tried,
                                   num_layers=num_layers)) is not None:
        decisions.append(decision)
        tried.append(decision.recipe)
        assert len(decisions) < 50, "the policy keeps proposing"
    return decisions


def test_rules_cover_every_diagnosis_label():
    assert set(TEXT_RULES) == set(LABELS)


# -- the first move of each rule ------------------------------------------------------------------------------

def test_overfitting_first_raises_weight_decay():
    finding = "val loss rose 2 epochs (0.350 -> 0.450) while train loss fell (0.500 -> 0.050)"
    decision = first("overfitting", Recipe(), finding=finding)
    assert decision.recipe == Recipe(weight_decay=0.05)
    assert decision.changes == {"weight_decay": (0.01, 0.05)}
    assert decision.diagnosis_label == "overfitting"
    assert decision.reason == f"overfitting: {finding} -> more weight decay: weight_decay 0.01 -> 0.05"


def test_underfitting_on_a_head_first_trains_the_whole_encoder_and_brings_the_rate_down_with_it():
    decision = first("underfitting", Recipe(trainable_layers=0, learning_rate=1e-3))
    assert decision.changes == {"trainable_layers": (0, "all"), "learning_rate": (1e-3, 2e-4)}
    assert decision.reason.endswith(
        "more trainable layers: the whole encoder: trainable_layers 0 -> all, learning_rate 0.001 -> 0.0002")


def test_underfitting_of_a_full_fine_tune_doubles_the_learning_rate():
    decision = first("underfitting", Recipe(trainable_layers="all"))
    assert decision.changes == {"learning_rate": (5e-5, 1e-4)}
    assert "higher learning rate: learning_rate 5e-05 -> 0.0001" in decision.reason


def test_diverged_first_cuts_the_learning_rate_tenfold():
    decision = first("diverged", Recipe())
    assert decision.changes == {"learning_rate": (5e-5, 5e-6)}
    assert decision.reason.endswith("much lower learning rate: learning_rate 5e-05 -> 5e-06")


def test_too_slow_first_doubles_the_learning_rate():
    decision = first("too_slow", Recipe())
    assert decision.changes == {"learning_rate": (5e-5, 1e-4)}
    assert decision.reason.startswith("too_slow: what the curves showed -> higher learning rate")


def test_good_fit_first_nudges_the_learning_rate_up():
    decision = first("good_fit", Recipe())
    assert decision.changes == {"learning_rate": (5e-5, 7.5e-5)}


def test_good_fit_of_a_frozen_encoder_unfreezes_it_whole_first():
    decision = first("good_fit", Recipe(trainable_layers=0, learning_rate=8e-3))
    assert decision.changes == {"trainable_layers": (0, "all"), "learning_rate": (8e-3, 2e-4)}
    assert "converged at this depth: the whole encoder" in decision.reason


def test_a_text_encoder_climbs_a_step_only_where_the_whole_is_tried():
    head = Recipe(trainable_layers=0, learning_rate=8e-3)
    whole = first("good_fit", head).recipe
    decision = first("good_fit", head, tried=[whole])
    assert decision.changes == {"trainable_layers": (0, 2), "learning_rate": (8e-3, 2e-4)}
    assert "unfreeze more layers" in decision.reason


def test_noisy_validation_says_how_much_validation_data_is_needed_and_keeps_exploring():
    history = [EpochRecord(1, 0.60, 0.40, 0.80, 0.80, 5e-5, 40.0, 30.0),
               EpochRecord(2, 0.30, 0.33, 0.85, 0.85, 5e-5, 40.0, 30.0),
               EpochRecord(3, 0.20, 0.34, 0.84, 0.84, 5e-5, 40.0, 30.0)]
    found = diagnose(history, diverged=False, n_val=120, num_classes=2)
    assert found.label == "noisy_validation"
    decision = next_recipe(found, Recipe(), [], num_layers=6)
    assert decision is not None
    assert decision.reason.startswith("noisy_validation: accuracy 0.850 +-0.064 on 120 validation examples "
                                      "(+-0.03 needs 545): trials cannot be told apart -> ")
    assert decision.changes == first("good_fit", Recipe()).changes


# -- the order of moves, one knob at a time -------------------------------------------------------------------

def test_overfitting_walks_its_moves_in_order_then_stops():
    decisions = walk("overfitting", Recipe(epochs=4), num_layers=6, best_epoch=2)
    assert [d.changes for d in decisions] == [
        {"weight_decay": (0.01, 0.05)},
        {"l2sp": (0.0, 0.1)},
        {"dropout": (0.1, 0.2)},
        {"head_dropout": (0.1, 0.2)},
        {"label_smoothing": (0.0, 0.1)},
        {"augment": (0.0, 0.1)},
        {"lora_rank": (0, 8), "learning_rate": (5e-5, 5e-4)},
        {"learning_rate": (5e-5, 2.5e-5)},
        {"epochs": (4, 2)},
        {"trainable_layers": ("all", 3)},
    ]


def test_a_frozen_encoder_gets_head_dropout_and_never_encoder_dropout_or_adapters():
    decisions = walk("overfitting", Recipe(epochs=4, trainable_layers=0, learning_rate=1e-3), num_layers=6)
    knobs = {knob for d in decisions for knob in d.changes}
    assert "head_dropout" in knobs
    assert not knobs & {"dropout", "lora_rank", "l2sp", "augment"}


def test_lora_rank_goes_down_on_overfitting_and_up_on_underfitting():
    lora = Recipe(trainable_layers="all", lora_rank=8, learning_rate=5e-4, epochs=4)
    assert {"lora_rank": (8, 4)} in [d.changes for d in walk("overfitting", lora)]
    assert {"lora_rank": (8, 16)} in [d.changes for d in walk("underfitting", lora)]
    assert {"lora_targets": ("attention", "all-linear")} in [d.changes for d in walk("underfitting", lora)]
    assert not any("lora_targets" in d.changes for d in walk("underfitting", lora.replace(lora_rank=0)))
    assert learning_rate_cap(lora) > learning_rate_cap(lora.replace(lora_rank=0)), "adapters take higher rates"


def test_l2sp_is_not_proposed_for_a_head_alone():
    decisions = walk("overfitting", Recipe(epochs=4, trainable_layers=0, learning_rate=1e-3), num_layers=6)
    assert all("l2sp" not in d.changes for d in decisions)


def test_l2sp_is_not_proposed_under_lora_whose_pretrained_weights_are_frozen():
    decisions = walk("overfitting", Recipe(epochs=4, trainable_layers=2, lora_rank=8, learning_rate=5e-4),
                     num_layers=6)
    assert decisions and all("l2sp" not in d.changes for d in decisions)
    assert any("l2sp" in d.changes for d in walk("overfitting", Recipe(epochs=4, trainable_layers=2), num_layers=6))


def test_halving_all_layers_needs_the_depth_and_is_skipped_without_it():
    decisions = walk("overfitting", Recipe(epochs=4), num_layers=None)
    assert "trainable_layers" not in {knob for d in decisions for knob in d.changes}
    assert walk("overfitting", Recipe(trainable_layers=4), num_layers=None)[-1].changes == {
        "trainable_layers": (4, 2)}


def test_no_weight_decay_becomes_some():
    assert first("overfitting", Recipe(weight_decay=0)).changes == {"weight_decay": (0, 0.05)}


@pytest.mark.parametrize(("layers", "num_layers", "expected"),
                         [(0, 6, 2), (2, 6, 4), (4, 6, "all"), (1, 6, 2), (2, 4, "all"), (2, None, 4)])
def test_underfitting_climbs_a_pretrained_image_bodys_trainable_depth(layers, num_layers, expected):
    decision = next_recipe(diagnosis("underfitting"), Recipe(trainable_layers=layers), (), num_layers=num_layers,
                           family=FAMILIES["image"])
    assert decision.changes["trainable_layers"] == (layers, expected)


@pytest.mark.parametrize("layers", [0, 1, 2, 4])
def test_an_underfitting_text_encoder_trains_whole(layers):
    assert first("underfitting", Recipe(trainable_layers=layers)).changes["trainable_layers"] == (layers, "all")


def test_underfitting_lowers_regularization_last_and_switches_tiny_weight_decay_off():
    decisions = walk("underfitting", Recipe(weight_decay=0.002, dropout=0.05, learning_rate=2e-4, epochs=20))
    assert [d.changes for d in decisions] == [{"weight_decay": (0.002, 0.0)}, {"dropout": (0.05, 0.0)},
                                              {"head_dropout": (0.1, 0.0)}]


def test_diverged_walks_rate_warmup_then_clipping():
    decisions = walk("diverged", Recipe(grad_clip=0.0))
    assert [d.changes for d in decisions] == [
        {"learning_rate": (5e-5, 5e-6)},
        {"warmup_ratio": (0.06, 0.12)},
        {"grad_clip": (0.0, 1.0)},
    ]


def test_diverged_warmup_is_at_least_a_tenth_and_at_most_three_tenths():
    assert first("diverged", Recipe(warmup_ratio=0.0), [Recipe(learning_rate=5e-6, warmup_ratio=0.0)]).changes == {
        "warmup_ratio": (0.0, 0.1)}
    assert first("diverged", Recipe(warmup_ratio=0.2), [Recipe(learning_rate=5e-6, warmup_ratio=0.2)]).changes == {
        "warmup_ratio": (0.2, 0.3)}


# -- caps -----------------------------------------------------------------------------------------------------

def test_learning_rate_raises_stop_at_the_cap_for_the_depth():
    assert learning_rate_cap(Recipe(trainable_layers=0)) == 1e-2
    assert learning_rate_cap(Recipe(trainable_layers=2)) == 2e-4
    assert first("too_slow", Recipe(learning_rate=1.5e-4)).changes == {"learning_rate": (1.5e-4, 2e-4)}
    assert first("too_slow", Recipe(trainable_layers=0, learning_rate=8e-3)).changes == {
        "learning_rate": (8e-3, 1e-2)}


def test_a_rate_already_above_its_cap_is_not_lowered_by_a_raise():
    # lr 1e-3 on a full fine-tune is above the cap: "higher learning rate" skips to the next move
    assert first("too_slow", Recipe(learning_rate=1e-3)).changes == {"epochs": (3, 6)}


def test_epochs_double_up_to_the_cap():
    assert first("too_slow", Recipe(learning_rate=2e-4, epochs=15)).changes == {"epochs": (15, MAX_EPOCHS)}
    assert next_recipe(diagnosis("too_slow"), Recipe(learning_rate=2e-4, epochs=20), [], num_layers=6) is None


def test_weight_decay_and_dropout_caps():
    assert first("overfitting", Recipe(weight_decay=0.1)).changes == {"weight_decay": (0.1, 0.5)}
    assert first("overfitting", Recipe(weight_decay=0.5)).changes == {"weight_decay": (0.5, 1.0)}
    assert first("overfitting", Recipe(weight_decay=1.0, dropout=0.45, l2sp=100.0)).changes == {
        "dropout": (0.45, 0.5)}
    # A raise the cap cuts to a small step (x1.2) is not made: the next move is.
    assert first("overfitting", Recipe(weight_decay=0.8, dropout=0.45, l2sp=100.0)).changes == {
        "dropout": (0.45, 0.5)}


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("start", [Recipe(), Recipe(trainable_layers=0, learning_rate=1e-3, epochs=10),
                                   Recipe(trainable_layers=2, weight_decay=0.0, dropout=0.0, grad_clip=0.0)],
                         ids=["default", "head-only", "two-layers-unregularized"])
def test_following_the_policy_keeps_every_knob_valid_and_within_its_caps(label, start):
    """Apply each decision to the recipe it proposes, as the loop would, until nothing is left."""
    recipe, tried = start, [start]
    for _ in range(100):
        decision = next_recipe(diagnosis(label, best_epoch=1), recipe, tried, num_layers=6)
        if decision is None:
            break
        recipe = decision.recipe
        assert recipe.problems() == []
        assert recipe_key(recipe) not in {recipe_key(t) for t in tried}
        assert MIN_LEARNING_RATE <= recipe.learning_rate <= max(learning_rate_cap(recipe), start.learning_rate)
        assert recipe.weight_decay <= 1.0 and recipe.dropout <= 0.5 and recipe.warmup_ratio <= 0.3
        assert 1 <= recipe.epochs <= max(MAX_EPOCHS, start.epochs)
        tried.append(recipe)
    else:
        pytest.fail("the policy never ran out of moves")


# -- never repeat ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", LABELS)
def test_never_proposes_a_recipe_already_run_and_runs_out(label):
    start = Recipe(trainable_layers=0, learning_rate=1e-3, grad_clip=0.0)
    decisions = walk(label, start)
    keys = [recipe_key(d.recipe) for d in decisions]
    assert decisions, f"{label} proposed nothing for {start}"
    assert len(set(keys)) == len(keys)
    assert recipe_key(start) not in keys


def test_seed_does_not_make_a_recipe_new():
    reseeded = Recipe(weight_decay=0.05, seed=7)
    assert recipe_key(reseeded) == recipe_key(Recipe(weight_decay=0.05))
    assert first("overfitting", Recipe(), [reseeded]).changes == {"l2sp": (0.0, 0.1)}


def test_tried_may_hold_keys_instead_of_recipes():
    assert first("overfitting", Recipe(), {recipe_key(Recipe(weight_decay=0.05))}).changes == {
        "l2sp": (0.0, 0.1)}


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="'diagnosis.label' must be one of"):
        next_recipe(diagnosis("confused"), Recipe(), [], num_layers=6)


# -- tables: an MLP from scratch ------------------------------------------------------------------------------

def walk_table(label: str, recipe: Recipe) -> list:
    tried, decisions = [], []
    while (decision := next_recipe(diagnosis(label, best_epoch=2), recipe, tried, num_layers=None,
                                   family=TABLE_FAMILY)) is not None:
        decisions.append(decision)
        tried.append(decision.recipe)
        assert len(decisions) < 50
    return decisions


def test_an_underfitting_table_gets_more_neurons_then_more_layers():
    decisions = walk_table("underfitting", Recipe(hidden_layers=1, hidden_units=64, learning_rate=1e-3))
    assert [d.changes for d in decisions[:2]] == [{"hidden_units": (64, 128)}, {"hidden_layers": (1, 2)}]
    assert "more neurons" in decisions[0].reason


def test_an_overfitting_table_is_regularized_then_made_smaller():
    decisions = walk_table("overfitting", Recipe(hidden_layers=2, hidden_units=256, epochs=30))
    knobs = [next(iter(d.changes)) for d in decisions]
    assert knobs[:2] == ["weight_decay", "dropout"]
    assert {"hidden_units": (256, 128)} in [d.changes for d in decisions]
    assert {"hidden_layers": (2, 1)} in [d.changes for d in decisions]


@pytest.mark.parametrize("label", sorted(TEXT_RULES))
def test_a_table_never_gets_encoder_moves(label):
    decisions = walk_table(label, Recipe(hidden_layers=2, hidden_units=256, epochs=30, grad_clip=0.0))
    moved = {knob for d in decisions for knob in d.changes}
    assert not moved & {"trainable_layers", "lora_rank", "lora_targets", "l2sp", "head_dropout", "unfreezing"}


def test_an_overfitting_table_is_also_offered_mixup_after_augmentation():
    decisions = walk_table("overfitting", Recipe(hidden_layers=2, hidden_units=256, epochs=30))
    knobs = [next(iter(d.changes)) for d in decisions]
    assert knobs.index("augment") < knobs.index("mixup")


# -- images ---------------------------------------------------------------------------------------------------

def walk_family(label: str, recipe: Recipe, family: str, num_layers: int | None = None) -> list:
    tried, decisions = [], []
    while (decision := next_recipe(diagnosis(label, best_epoch=2), recipe, tried, num_layers=num_layers,
                                   family=FAMILIES[family])) is not None:
        decisions.append(decision)
        tried.append(decision.recipe)
        assert len(decisions) < 50
    return decisions


def test_an_overfitting_small_cnn_is_augmented_then_mixed_before_anything_else():
    decisions = walk_family("overfitting", Recipe(hidden_layers=2, hidden_units=64, epochs=30), "image-scratch")
    assert [d.changes for d in decisions[:2]] == [{"augment": (0.0, 0.2)}, {"mixup": (0.0, 0.2)}]
    assert "crops, flips" in decisions[0].reason
    assert {"hidden_units": (64, 32)} in [d.changes for d in decisions], "and at last a narrower CNN"


def test_an_underfitting_small_cnn_gets_more_channels_then_a_stage():
    decisions = walk_family("underfitting", Recipe(hidden_layers=2, hidden_units=64, epochs=30), "image-scratch")
    assert [d.changes for d in decisions[:2]] == [{"hidden_units": (64, 128)}, {"hidden_layers": (2, 3)}]


def test_a_pretrained_image_body_is_unfrozen_and_augmented_only_where_layers_train():
    head = Recipe(trainable_layers=0, learning_rate=2e-3, epochs=5)
    assert first_in("underfitting", head, "image").changes["trainable_layers"] == (0, 2)
    head_moves = {knob for d in walk_family("overfitting", head, "image", 18) for knob in d.changes}
    assert not head_moves & {"augment", "mixup", "l2sp"}, "a head on cached features keeps its cache"
    deeper = Recipe(trainable_layers=2, learning_rate=2e-4, epochs=5)
    deeper_moves = [next(iter(d.changes)) for d in walk_family("overfitting", deeper, "image", 18)]
    assert deeper_moves[:4] == ["weight_decay", "l2sp", "augment", "mixup"]
    assert not {"lora_rank", "lora_targets", "head_dropout", "attention_dropout"} & set(deeper_moves)


def first_in(label: str, recipe: Recipe, family: str):
    decision = next_recipe(diagnosis(label), recipe, (), num_layers=18, family=FAMILIES[family])
    assert decision is not None
    return decision


# -- moves that can change the model -----------------------------------------------------------------------

def test_l2sp_strength_scales_with_the_rate_and_the_length_of_the_run():
    """The pull adds up to lr x strength x steps: the first setting makes that 0.5 at any rate."""
    slow = Recipe(trainable_layers="all", learning_rate=2e-4, epochs=5, batch_size=16)
    fast = slow.replace(learning_rate=4e-4)
    for recipe in (slow, fast):  # weight decay would need 12.5 (or 6.25) to be felt, beyond its cap: passed
        decision = next_recipe(diagnosis("overfitting"), recipe, [], num_layers=6, train_size=128)
        strength = decision.changes["l2sp"][1]
        steps = 8 * 5
        assert recipe.learning_rate * strength * steps == pytest.approx(0.5, rel=1e-3)
    pulled = slow.replace(l2sp=62.5)
    stronger = next_recipe(diagnosis("overfitting"), pulled, [], num_layers=6, train_size=128)
    assert stronger.changes["l2sp"] == (62.5, 100.0), "then x5, within its range"


def test_weight_decay_rises_to_a_felt_pull_where_the_run_is_known():
    recipe = Recipe(trainable_layers=2, learning_rate=1e-4, epochs=4, batch_size=16)
    decision = next_recipe(diagnosis("overfitting"), recipe, [], num_layers=6, train_size=6400)
    assert decision.changes == {"weight_decay": (0.01, 0.625)}  # 0.1 / (1e-4 x 400 steps x 4 epochs)
    within = next_recipe(diagnosis("overfitting"), recipe, [], num_layers=6, train_size=4800)
    assert within.changes == {"weight_decay": (0.01, 0.8333)}  # 0.1 / (1e-4 x 300 steps x 4 epochs)
    short = next_recipe(diagnosis("overfitting"), recipe, [], num_layers=6, train_size=1600)
    assert "weight_decay" not in short.changes, "2.5 would be felt, beyond its cap of 1: no trial that asks nothing"
    assert short.changes == {"l2sp": (0.0, 12.5)}, "the next move instead: 0.5 / (1e-4 x 100 steps x 4 epochs)"


def test_a_move_without_effect_is_taken_once_further_then_left():
    best = Recipe(trainable_layers=2, learning_rate=1e-4)
    first_step = next_recipe(diagnosis("overfitting"), best, [], num_layers=6).recipe
    assert first_step.weight_decay == 0.05
    further = next_recipe(diagnosis("overfitting"), best, [first_step], num_layers=6, ineffective=[first_step])
    assert further.recipe.weight_decay == 0.25 and "further" in further.reason
    assert further.changes == {"weight_decay": (0.01, 0.25)}
    moved_on = next_recipe(diagnosis("overfitting"), best, [first_step, further.recipe], num_layers=6,
                           ineffective=[first_step, further.recipe])
    assert "weight_decay" not in moved_on.changes and "further" not in moved_on.reason


def test_few_examples_per_class_make_pairs_the_first_move_for_texts():
    head = Recipe(trainable_layers=0, learning_rate=2e-3)
    decision = next_recipe(diagnosis("good_fit"), head, [], num_layers=6, examples_per_class=16)
    assert decision.changes == {"contrastive": (0, 20)} and "SetFit" in decision.reason
    plenty = next_recipe(diagnosis("good_fit"), head, [], num_layers=6, examples_per_class=500)
    assert "contrastive" not in plenty.changes
    deeper = Recipe(trainable_layers=2, learning_rate=2e-4)
    pairs = next_recipe(diagnosis("underfitting"), deeper, [], num_layers=6, examples_per_class=8)
    assert pairs.recipe.contrastive == 20 and pairs.recipe.trainable_layers == 0
    assert pairs.recipe.learning_rate == 1e-3, "the head after pairs trains at a head's rate"


def test_exploring_tries_the_larger_moves_once_each():
    best = Recipe(trainable_layers=0, learning_rate=2e-3, epochs=5)
    tried: list[Recipe] = []
    seen = []
    while (decision := explore(best, tried, num_layers=6, examples_per_class=16)) is not None:
        seen.append(decision.changes)
        tried.append(decision.recipe)
    assert seen == [{"trainable_layers": (0, "all"), "learning_rate": (2e-3, 2e-4), "epochs": (5, 3)},
                    {"contrastive": (0, 20)},
                    {"epochs": (5, 10)}, {"learning_rate": (2e-3, 4e-3)}]
    assert untried(best, tried, num_layers=6, examples_per_class=16) == []
    assert untried(best, tried[:1], num_layers=6, examples_per_class=16) == [
        "few examples per class: tune the encoder on pairs of texts first, then the head (SetFit)",
        "longer training", "a higher learning rate"]


def test_pairs_are_sized_to_the_time_left_and_skipped_where_too_few_fit():
    from tuneloop.tuning.strategies import DataFacts

    head = Recipe(trainable_layers=0, learning_rate=2e-3)
    sized = next_recipe(diagnosis("good_fit"), head, [], num_layers=6, examples_per_class=16, pairs_affordable=8)
    assert sized.changes["contrastive"] == (0, 8)
    skipped = next_recipe(diagnosis("good_fit"), head, [], num_layers=6, examples_per_class=16, pairs_affordable=3)
    assert "contrastive" not in skipped.changes
    facts = DataFacts(6, train_size=100, examples_per_class=50, pair_seconds=lambda: 0.01)
    assert facts.pairs_affordable(60.0) == 30, "half of 60 s at 0.01 s a pair over 100 examples"
    assert facts.pairs_affordable(None) is None
    assert DataFacts(6, 100, 500, lambda: 1 / 0).pairs_affordable(60.0) is None, "many per class: not measured"


def test_a_guided_strategy_names_what_it_has_not_tried():
    from tuneloop.tuning.strategies import DataFacts, GuidedStrategy, TrialOutcome

    strategy = GuidedStrategy(6, TEXT_FAMILY, DataFacts(6, train_size=100, examples_per_class=50))
    head = Recipe(trainable_layers=0, learning_rate=2e-3)
    history = [TrialOutcome(head, "completed", 0.8, diagnosis("good_fit"), 0)]
    assert strategy.untried(history)[:2] == ["the whole encoder", "few examples per class: tune the encoder on pairs "
                                             "of texts first, then the head (SetFit)"]


def test_the_whole_encoder_after_a_head_gets_enough_steps_not_the_heads_many_epochs():
    from tuneloop.tuning.policy import Context, Deepest

    head = Recipe(trainable_layers=0, learning_rate=1e-2, epochs=50, batch_size=16)
    few = Deepest().apply(head, "trainable_layers", Context(train_size=26))
    assert few["batch_size"] == 8 and few["epochs"] == 15, "4 steps an epoch: 15 epochs make 60 steps"
    many = Deepest().apply(head, "trainable_layers", Context(train_size=2000))
    assert many["epochs"] == 3 and "batch_size" not in many, "the default epochs: far more than 60 steps"


def test_a_trials_cost_is_estimated_from_what_reading_an_example_costs():
    from tuneloop.tuning.strategies import DataFacts

    facts = DataFacts(6, train_size=100, val_size=20, pair_seconds=lambda: 0.1, example_seconds=lambda: 0.01)
    head = facts.trial_cost(Recipe(trainable_layers=0))
    assert head.seconds(50) == 0.0, "a head on cached vectors costs nothing worth counting"
    whole = facts.trial_cost(Recipe(trainable_layers="all"))
    assert whole.once == 0.0 and whole.per_epoch == pytest.approx(0.01 * (3 * 100 + 20))
    top = facts.trial_cost(Recipe(trainable_layers=2))
    assert top.once == pytest.approx(0.01 * 120 * 4 / 6), "the four frozen layers are read once, then cached"
    assert top.per_epoch == pytest.approx(whole.per_epoch / 3)
    pairs = facts.trial_cost(Recipe(trainable_layers=0, contrastive=8))
    assert pairs.once == pytest.approx(8 * 100 * 0.1 + 0.01 * 120), "its pairs, then the tuned encoder's vectors"
    augmented = facts.trial_cost(Recipe(trainable_layers=2, augment=0.1))
    assert augmented.once == 0.0 and augmented.per_epoch > top.per_epoch, "new inputs every epoch: nothing cached"
    assert DataFacts(6, 100).trial_cost(Recipe()) is None, "no cost per example known"
    assert whole.epochs_within(10.0) == 3 and whole.epochs_within(1.0) == 0


def test_a_move_too_costly_for_the_time_left_is_cut_to_fit_or_passed_over():
    import optuna

    from tuneloop.tuning.strategies import DataFacts, GuidedStrategy, TrialOutcome

    facts = DataFacts(6, train_size=100, examples_per_class=500, val_size=20, example_seconds=lambda: 0.01)
    head = Recipe(trainable_layers=0, learning_rate=2e-3)
    history = [TrialOutcome(head, "completed", 0.8, diagnosis("good_fit"), 0)]

    def propose(seconds_left):
        strategy = GuidedStrategy(6, TEXT_FAMILY, facts)
        study = optuna.create_study(direction="maximize")
        return strategy, strategy.propose(study, Recipe(), history, None, seconds_left)

    _, roomy = propose(1000.0)
    assert roomy.recipe.trainable_layers == "all" and roomy.recipe.epochs == 9, "converged head: the whole encoder"
    _, cut_whole = propose(10.0)  # 3.2 s an epoch
    assert cut_whole.recipe.trainable_layers == "all" and cut_whole.recipe.epochs == 3
    strategy, cut = propose(3.0)  # the whole passed over; 0.8 s reading four frozen layers, then 1.07 s an epoch
    assert cut.recipe.trainable_layers == 2 and cut.recipe.epochs == 2
    assert "2 of its 3 epochs" in cut.reason
    after = [*history, TrialOutcome(cut.recipe, "completed", 0.7, diagnosis("good_fit"), 1, 0)]
    again = strategy.propose(optuna.create_study(direction="maximize"), Recipe(), after, None, 2.5)
    assert again.recipe.trainable_layers != 2, "the move was made, shorter: not again, shorter still"
    strategy, other = propose(2.0)
    assert other.recipe.trainable_layers != 2, "one epoch of the top two layers fits, two do not"
    assert "trainable_layers 0 -> all" in strategy.passed_over[0]
    assert "trainable_layers 0 -> 2" in strategy.passed_over[1]
    _, unlimited = propose(None)
    assert unlimited.recipe == roomy.recipe, "without a time limit nothing is cut"
    strategy.passed_over = [f"move {i}" for i in range(5)]
    assert strategy.done_reason().endswith("passed over: move 0; move 1; move 2; and 2 more"), "three named"
