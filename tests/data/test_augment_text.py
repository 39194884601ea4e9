import difflib
import json
from collections import Counter

import numpy as np
import pytest

from tuneloop.data.augment_text import EditRates, SynonymTable, TextAugmenter
from tuneloop.errors import ConfigError, DataError

WORDS = [f"w{i}" for i in range(200)]


def random_texts(n: int, seed: int = 0, low: int = 5, high: int = 20) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(low, high))) for _ in range(n)]


def every_word_has_a_synonym() -> SynonymTable:
    return SynonymTable({word: [f"{word}x", f"{word}y"] for word in WORDS})


def changed_fraction(before: list[str], after: list[str]) -> float:
    """The share of words an edit script between the texts touches, over all texts."""
    changed = total = 0
    for a, b in zip(before, after, strict=True):
        old, new = a.split(), b.split()
        matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
        changed += len(old) - sum(block.size for block in matcher.get_matching_blocks())
        total += len(old)
    return changed / total


def only(**rates: float) -> EditRates:
    return EditRates(**{"replace": 0.0, "insert": 0.0, "swap": 0.0, "delete": 0.0, **rates})


def test_strength_zero_returns_the_texts_unchanged():
    texts = random_texts(50)
    out = TextAugmenter(0.0, every_word_has_a_synonym()).augment(texts, np.random.default_rng(0))
    assert out == texts
    assert all(a is b for a, b in zip(out, texts, strict=True))


def test_the_same_seed_gives_the_same_texts_and_another_seed_others():
    texts = random_texts(100)
    augmenter = TextAugmenter(0.5, every_word_has_a_synonym())
    first = augmenter.augment(texts, np.random.default_rng(7))
    assert first == augmenter.augment(texts, np.random.default_rng(7))
    assert first != augmenter.augment(texts, np.random.default_rng(8))
    assert len(first) == len(texts) and first != texts


def test_more_strength_changes_more_words():
    texts = random_texts(400)
    table = every_word_has_a_synonym()
    fractions = {s: changed_fraction(texts, TextAugmenter(s, table).augment(texts, np.random.default_rng(0)))
                 for s in (0.1, 0.5, 1.0)}
    assert 0.0 < fractions[0.1] < fractions[0.5] < fractions[1.0]
    assert fractions[0.5] > 3 * fractions[0.1]


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_deletion_removes_words_at_the_scaled_rate(strength):
    texts = random_texts(2000, low=10, high=30)
    out = TextAugmenter(strength).augment(texts, np.random.default_rng(0))  # no table: swap and delete only
    removed = 1 - sum(len(t.split()) for t in out) / sum(len(t.split()) for t in texts)
    assert removed == pytest.approx(0.1 * strength, abs=0.01)
    assert all(Counter(b.split()) <= Counter(a.split()) for a, b in zip(texts, out, strict=True))


def test_deletion_never_empties_a_text_and_leaves_one_word_texts_alone():
    texts = ["alpha beta"] * 5000 + ["alone"] * 500
    out = TextAugmenter(1.0, max_rates=only(delete=0.5)).augment(texts, np.random.default_rng(0))
    lengths = Counter(len(t.split()) for t in out[:5000])
    assert set(lengths) == {1, 2}  # a quarter of the pairs lost both words and kept one
    assert lengths[1] == pytest.approx(0.75 * 5000, rel=0.05)
    assert out[5000:] == ["alone"] * 500


def test_synonym_replacement_uses_the_table_and_keeps_case_and_punctuation():
    table = SynonymTable.from_dict({"synonyms": {"good": ["great"], "film": ["movie"]}})
    augmenter = TextAugmenter(1.0, table, max_rates=only(replace=1.0))
    out = augmenter.augment(['Good film, good. GOOD "film" bank'], np.random.default_rng(0))
    assert out == ['Great movie, great. GREAT "movie" bank']


def test_insertion_adds_a_synonym_of_a_word_of_the_text():
    table = SynonymTable({"good": ["great"]})
    augmenter = TextAugmenter(1.0, table, max_rates=only(insert=1.0))
    out = augmenter.augment(["Good film, truly good."] * 20, np.random.default_rng(0))
    for text in out:
        counts = Counter(text.split())
        assert counts.pop("great") == 2  # one for each 'good'; lower case: the capital only starts the sentence
        assert counts == Counter(["Good", "film,", "truly", "good."])
    assert len(set(out)) > 1  # inserted at random places


def test_swap_reorders_without_adding_or_losing_words():
    texts = random_texts(200)
    out = TextAugmenter(1.0, max_rates=only(swap=0.5)).augment(texts, np.random.default_rng(0))
    assert all(Counter(a.split()) == Counter(b.split()) for a, b in zip(texts, out, strict=True))
    assert sum(a != b for a, b in zip(texts, out, strict=True)) > 150


def test_a_word_chosen_for_a_swap_always_changes_places():
    out = TextAugmenter(1.0, max_rates=only(swap=0.1)).augment(["a b c"] * 20_000, np.random.default_rng(0))
    changed = sum(text != "a b c" for text in out) / len(out)
    # any text with a chosen word changes, but for the rare pair of swaps that undo each other (about 0.007)
    assert changed == pytest.approx(1 - 0.9**3, abs=0.015)


def test_without_a_table_words_are_never_replaced():
    texts = random_texts(200)
    out = TextAugmenter(1.0, max_rates=only(replace=1.0, insert=1.0)).augment(texts, np.random.default_rng(0))
    assert out == texts


def test_synonym_lookup_ignores_case_and_answers_in_the_words_case():
    table = SynonymTable.from_dict({"synonyms": {"Good": ["great", "fine", "good"]}})
    assert table.synonyms("good") == ["great", "fine"]
    assert table.synonyms("Good") == ["Great", "Fine"]
    assert table.synonyms("GOOD") == ["GREAT", "FINE"]
    assert table.synonyms("bank") == []
    assert "gOOd" in table and "bank" not in table


def test_a_table_round_trips_through_json():
    table = SynonymTable({"good": ["great", "fine"], "oil": ["petroleum"]}, source="m", k=5, min_similarity=0.45)
    again = SynonymTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.to_dict() == table.to_dict()
    assert again.synonyms("oil") == ["petroleum"] and again.min_similarity == 0.45


@pytest.mark.parametrize("data", [{"words": {}}, {"synonyms": {"good": "great"}}, {"synonyms": {"good": [1]}}, []])
def test_a_malformed_table_is_rejected(data):
    with pytest.raises(DataError, match="synonym table"):
        SynonymTable.from_dict(data)


@pytest.mark.parametrize("strength", [-0.1, 1.5, "high", True])
def test_strength_outside_zero_to_one_is_rejected_with_the_value(strength):
    with pytest.raises(ConfigError, match=rf"'strength' parameter of TextAugmenter .* \[0, 1\]\. Got {strength!r}"):
        TextAugmenter(strength)


COMMON = ["good", "increase", "company", "oil", "bank", "movie"]
PLAUSIBLE = {
    "good": {"great", "excellent", "better", "nice", "fine", "best"},
    "increase": {"increases", "increased", "increasing", "decrease", "rise", "raise"},
    "company": {"companies", "firm", "firms", "corporation", "corporations", "corporate"},
    "oil": {"oils", "petroleum", "gasoline", "fuel", "petrol"},
    "bank": {"banks", "banking", "banker", "bankers"},
    "movie": {"movies", "film", "films", "cinema"},
}


def assert_whole_words(table: SynonymTable) -> None:
    for word in table.words:
        for neighbour in [word, *table.synonyms(word)]:
            assert neighbour.isalpha() and neighbour.islower() and len(neighbour) >= 3, (word, neighbour)


def test_backbone_neighbours_of_common_words_are_plausible_and_limited_to_the_given_words():
    from tuneloop.models.hf_text import default_backbone

    words = ["The", "good,", "Increase!", "company", "oil", "bank", "movie", "xyzzyq", "and"]
    table = SynonymTable.from_backbone(default_backbone(), vocabulary_words=words, k=5)
    assert table.words == sorted(COMMON)  # not the stop words, not a word outside the vocabulary
    for word in COMMON:
        neighbours = table.synonyms(word)
        assert 1 <= len(neighbours) <= 5
        # the nearest is a synonym or inflection, and so are at least two; the rest may be merely related
        # words or antonyms, which embeddings place close too ('good' -> 'bad')
        assert neighbours[0] in PLAUSIBLE[word] and len(PLAUSIBLE[word] & set(neighbours)) >= 2, (word, neighbours)
    assert_whole_words(table)
    assert table.synonyms("Increase")[0] == "Increases"


def test_a_higher_similarity_threshold_keeps_fewer_neighbours():
    from tuneloop.models.hf_text import default_backbone

    loose = SynonymTable.from_backbone(default_backbone(), vocabulary_words=COMMON, k=8, min_similarity=0.3)
    strict = SynonymTable.from_backbone(default_backbone(), vocabulary_words=COMMON, k=8, min_similarity=0.6)
    assert all(len(loose.synonyms(w)) == 8 for w in COMMON)
    assert all(set(strict.synonyms(w)) < set(loose.synonyms(w)) for w in COMMON)


def test_invalid_table_parameters_are_all_reported_at_once():
    with pytest.raises(ConfigError, match="2 problems") as raised:
        SynonymTable.from_backbone("unused", k=0, min_similarity=2.0)
    assert "'k' parameter" in str(raised.value) and "'min_similarity' parameter" in str(raised.value)


@pytest.mark.e2e
def test_the_whole_vocabulary_table_agrees_with_the_restricted_one():
    from tuneloop.models.hf_text import default_backbone

    full = SynonymTable.from_backbone(default_backbone())
    restricted = SynonymTable.from_backbone(default_backbone(), vocabulary_words=COMMON)
    assert len(full) > 10_000
    assert all(full.synonyms(w) == restricted.synonyms(w) for w in COMMON)
    assert_whole_words(full)
