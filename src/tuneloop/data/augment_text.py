"""Text augmentation for fighting overfitting: EDA's four word edits, scaled by one ``strength`` knob.

EDA (Wei & Zou, 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
Classification") edits a sentence by synonym replacement, random insertion of a synonym, random swap of two
words and random deletion. Here every word is subject to each edit independently, with a probability that
grows linearly with ``strength`` (0 = off, 1 = the most the tuning loop will ask for). At strength 1 a word
is replaced by a synonym with probability 0.2 and deleted, swapped, or has a synonym of it inserted
elsewhere with probability 0.1 each. The paper recommends changing about 10% of the words per edit
(alpha = 0.1) and saw the gains shrink for larger alphas, so the rates at full strength stay near it.

Synonyms come from the backbone itself rather than from a downloaded thesaurus: the nearest neighbours of a
word's input embedding among the other whole words of the tokenizer vocabulary (``SynonymTable``). Such
neighbours are mostly inflections, synonyms and close relations ('increase': increases, increased,
increasing, ...), but embeddings also put antonyms close ('good' -> 'bad', 'increase' -> 'decrease'),
because they occur in the same contexts. At the low replacement rates used here that is label noise on a
few words, which is what augmentation adds anyway, but it is the reason the rates stay small.

Words are whitespace-separated tokens; punctuation stays attached to its word (a synonym of "good," is
written "great,") and the text is not lowercased.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneloop.errors import ConfigError, DataError, ModelError


@dataclass(frozen=True)
class EditRates:
    """Per-word probabilities of each EDA edit."""

    replace: float
    insert: float
    swap: float
    delete: float

    def scaled(self, strength: float) -> EditRates:
        return EditRates(self.replace * strength, self.insert * strength, self.swap * strength,
                         self.delete * strength)


# The rates at strength 1. Synonym replacement keeps the most of a text's meaning, so it gets the highest rate.
MAX_RATES = EditRates(replace=0.2, insert=0.1, swap=0.1, delete=0.1)

MIN_WORD_LENGTH = 3
DEFAULT_K = 5
# Cosine similarity of all-MiniLM-L6-v2 input embeddings above which a neighbour is a usable substitute.
# Neighbours at 0.45-0.50 are still inflections, synonyms or close relations (taller -> tallest,
# forerunner -> precursor, deer -> moose); at 0.40-0.45 unrelated-but-associated words start to appear
# (concealed -> firearm, sober -> alcoholic, oven -> refrigerator), and below 0.40 most are noise.
DEFAULT_MIN_SIMILARITY = 0.45
CHUNK_ROWS = 1024  # query words per matrix product: 1024 x 21k similarities, about 90 MB of float32

# Function words are neither replaced nor inserted (as in EDA): their embedding neighbours are other function
# words ('the' -> 'and', 'that'), which change the grammar without adding a plausible variant, and negations
# ('not', 'never') would flip a meaning.
STOP_WORDS = frozenset("""
a an the and or but nor so yet if then else than that this these those there here what which who whom whose
when where why how all any both each few more most other some such only own same too very just also not no
never none nothing cannot can could may might must shall should will would do does did doing done have has
had having be is am are was were been being get got i me my mine myself we us our ours ourselves you your
yours yourself yourselves he him his himself she her hers herself it its itself they them their theirs
themselves one ones of at by for with about against between into through during before after above below to
from up down in out on off over under again further once as until while because although though whether
since unless upon within without onto toward towards via per among amongst let lets ever
""".split())

_AFFIXES = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _split_punctuation(word: str) -> tuple[str, str, str]:
    """Leading punctuation, the word itself, trailing punctuation: '("Good!)' -> ('("', 'Good', '!)')."""
    match = _AFFIXES.match(word)
    assert match is not None  # the pattern matches every string
    return match.group(1), match.group(2), match.group(3)


def _match_case(template: str, word: str) -> str:
    """``word`` written with the capitalisation of ``template``: 'Good' -> 'Great', 'GOOD' -> 'GREAT'."""
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _is_candidate(token: str) -> bool:
    """A vocabulary entry that is a whole word: letters only (no '##' piece, no [unused]/special token)."""
    return len(token) >= MIN_WORD_LENGTH and token.isalpha() and token.lower() not in STOP_WORDS


class SynonymTable:
    """Lower-case word -> substitutes, best first. Lookups ignore case and answer in the word's case."""

    def __init__(self, synonyms: Mapping[str, Sequence[str]], *, source: str | None = None,
                 k: int | None = None, min_similarity: float | None = None):
        self._synonyms: dict[str, list[str]] = {}
        for word, neighbours in synonyms.items():
            key = word.lower()
            kept = [n.lower() for n in neighbours if n.lower() != key]
            if kept:
                self._synonyms[key] = list(dict.fromkeys(self._synonyms.get(key, []) + kept))
        self.source = source
        self.k = k
        self.min_similarity = min_similarity

    def synonyms(self, word: str) -> list[str]:
        """Substitutes for ``word`` in its capitalisation; empty when it has none."""
        return [_match_case(word, n) for n in self._synonyms.get(word.lower(), [])]

    @property
    def words(self) -> list[str]:
        return sorted(self._synonyms)

    def __len__(self) -> int:
        return len(self._synonyms)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and word.lower() in self._synonyms

    def to_dict(self) -> dict:
        return {"synonyms": {word: list(n) for word, n in sorted(self._synonyms.items())}, "source": self.source,
                "k": self.k, "min_similarity": self.min_similarity}

    @classmethod
    def from_dict(cls, data: Mapping) -> SynonymTable:
        """The table ``to_dict`` wrote; only its "synonyms" mapping is required."""
        synonyms = data.get("synonyms") if isinstance(data, Mapping) else data
        if not isinstance(synonyms, Mapping):
            raise DataError(f"A synonym table's 'synonyms' must be a mapping of word -> list of words. "
                            f"Got {type(synonyms).__name__} instead.")
        bad = [word for word, n in synonyms.items()
               if not isinstance(word, str) or isinstance(n, str) or not isinstance(n, Sequence)
               or not all(isinstance(s, str) for s in n)]
        if bad:
            raise DataError(f"A synonym table maps each word to a list of words; the entries for "
                            f"{', '.join(map(repr, bad[:5]))} are not lists of words.")
        return cls(synonyms, source=data.get("source"), k=data.get("k"), min_similarity=data.get("min_similarity"))

    @classmethod
    def from_backbone(cls, path: str | Path, vocabulary_words: Iterable[str] | None = None, k: int = DEFAULT_K,
                      min_similarity: float = DEFAULT_MIN_SIMILARITY) -> SynonymTable:
        """Each whole word's ``k`` nearest other whole words by cosine similarity of the backbone's input
        embeddings, keeping those at ``min_similarity`` or above.

        ``vocabulary_words`` (for example the words of the training texts; case and surrounding punctuation
        are ignored) limits which words get an entry, which makes the computation proportionally cheaper;
        their substitutes are still drawn from the whole vocabulary.
        """
        problems = []
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            problems.append(f"The 'k' parameter of SynonymTable.from_backbone must be an int >= 1. Got {k!r} instead.")
        if isinstance(min_similarity, bool) or not isinstance(min_similarity, int | float) \
                or not -1.0 <= min_similarity <= 1.0:
            problems.append(f"The 'min_similarity' parameter of SynonymTable.from_backbone must be a number in "
                            f"[-1, 1]. Got {min_similarity!r} instead.")
        if problems:
            raise ConfigError(problems)
        import torch

        words, embeddings = _whole_word_embeddings(Path(path))
        unit = torch.nn.functional.normalize(embeddings, dim=1)
        rows = list(range(len(words)))
        if vocabulary_words is not None:
            wanted = {_split_punctuation(w)[1].lower() for w in vocabulary_words}
            rows = [i for i, word in enumerate(words) if word in wanted]
        take = min(k, len(words) - 1)
        synonyms: dict[str, list[str]] = {}
        if take < 1 or not rows:
            return cls(synonyms, source=str(path), k=k, min_similarity=min_similarity)
        row_index = torch.tensor(rows)
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = row_index[start:start + CHUNK_ROWS]
            similarity = unit[chunk] @ unit.T
            similarity[torch.arange(len(chunk)), chunk] = -2.0  # a word is not its own neighbour
            values, indices = similarity.topk(take, dim=1)
            for word_index, sims, neighbours in zip(chunk.tolist(), values.tolist(), indices.tolist(), strict=True):
                kept = [words[n] for s, n in zip(sims, neighbours, strict=True) if s >= min_similarity]
                if kept:
                    synonyms[words[word_index]] = kept
        return cls(synonyms, source=str(path), k=k, min_similarity=min_similarity)


def _whole_word_embeddings(path: Path):
    """The lower-cased whole words of the backbone's vocabulary and their input-embedding rows."""
    import torch
    from transformers import AutoTokenizer

    if not path.is_dir():
        raise ModelError(f"{path}: no such model folder. Expected a Hugging Face model folder with a tokenizer "
                         "and weights.")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    matrix = _word_embedding_matrix(path)
    special = set(tokenizer.all_special_tokens)
    by_word: dict[str, int] = {}
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        # the first (most frequent, in WordPiece and BPE vocabularies) of a word's casings stands for it
        if token not in special and index < len(matrix) and _is_candidate(token):
            by_word.setdefault(token.lower(), index)
    words = list(by_word)
    return words, matrix[torch.tensor(list(by_word.values()), dtype=torch.long)].float()


def _word_embedding_matrix(path: Path):
    """The word-piece embedding matrix, read from the safetensors weights alone where there are some (a saved
    slim model's: its own tensors first, then its base's)."""
    from tuneloop.errors import ModelError
    from tuneloop.models.hf_text import weight_files

    try:
        files = weight_files(path)
    except ModelError:
        files = []
    for weights in files:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            keys = [key for key in handle.keys() if key.endswith("word_embeddings.weight")]
            if keys:
                return handle.get_tensor(keys[0])
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path)).get_input_embeddings().weight.detach()


def _is_probability(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0.0 <= value <= 1.0


class TextAugmenter:
    """EDA word edits at rates ``max_rates`` x ``strength``; without a synonym table, only swap and delete."""

    def __init__(self, strength: float, neighbours: SynonymTable | None = None, *,
                 max_rates: EditRates = MAX_RATES):
        problems = []
        if not _is_probability(strength):
            problems.append(f"The 'strength' parameter of TextAugmenter must be a number in [0, 1]. "
                            f"Got {strength!r} instead.")
        for name in ("replace", "insert", "swap", "delete"):
            if not _is_probability(getattr(max_rates, name)):
                problems.append(f"The '{name}' rate of TextAugmenter's max_rates must be a number in [0, 1]. "
                                f"Got {getattr(max_rates, name)!r} instead.")
        if problems:
            raise ConfigError(problems)
        self.strength = float(strength)
        self.neighbours = neighbours
        self.rates = max_rates.scaled(self.strength)

    def augment(self, texts: list[str], rng: np.random.Generator) -> list[str]:
        """A new list with each text edited; a text no edit touched is returned as it was."""
        if self.strength == 0.0:
            return list(texts)
        return [self._augment_text(text, rng) for text in texts]

    def _augment_text(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        if not words:
            return text
        # Delete first, so that the rate applies to the words of the text and not to inserted ones.
        edited = self._delete(words, rng)
        if self.neighbours is not None:
            edited = self._replace(edited, rng, self.neighbours)
            edited = self._insert(edited, rng, self.neighbours)
        edited = self._swap(edited, rng)
        return text if edited == words else " ".join(edited)

    def _delete(self, words: list[str], rng: np.random.Generator) -> list[str]:
        if len(words) < 2:
            return words
        keep = rng.random(len(words)) >= self.rates.delete
        if not keep.any():
            keep[rng.integers(len(words))] = True
        return [word for word, kept in zip(words, keep, strict=True) if kept]

    def _replace(self, words: list[str], rng: np.random.Generator, table: SynonymTable) -> list[str]:
        chosen = np.flatnonzero(rng.random(len(words)) < self.rates.replace)
        words = list(words)
        for i in chosen:
            before, word, after = _split_punctuation(words[i])
            options = table.synonyms(word) if word else []
            if options:
                words[i] = before + options[rng.integers(len(options))] + after
        return words

    def _insert(self, words: list[str], rng: np.random.Generator, table: SynonymTable) -> list[str]:
        chosen = np.flatnonzero(rng.random(len(words)) < self.rates.insert)
        additions = []
        for i in chosen:
            word = _split_punctuation(words[i])[1]
            if i == 0 and word[:1].isupper() and not word.isupper():
                word = word.lower()  # a capital that only starts the sentence does not travel with the word
            options = table.synonyms(word) if word else []
            if options:
                additions.append(options[rng.integers(len(options))])
        words = list(words)
        for addition in additions:
            words.insert(int(rng.integers(len(words) + 1)), addition)
        return words

    def _swap(self, words: list[str], rng: np.random.Generator) -> list[str]:
        if len(words) < 2:
            return words
        chosen = np.flatnonzero(rng.random(len(words)) < self.rates.swap)
        words = list(words)
        for i in chosen:
            j = int(rng.integers(len(words) - 1))
            j += j >= i  # another position, uniformly
            words[i], words[j] = words[j], words[i]
        return words
