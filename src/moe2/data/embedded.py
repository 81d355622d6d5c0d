"""The embedded default dataset: multiple-choice questions generated from tables in code.

Every family is generated deterministically from a seed and verified by the generator (the answer is
computed or looked up, appears exactly once among the options, options are distinct):

- ``geography``: capitals and continents from a country table, in both directions;
- ``word_sense``: antonyms (both directions) and synonyms from word tables;
- ``kinds``: which of four words is a fruit, a tool, an animal... (the others are of other kinds);
- ``smallest``: the smallest of four two-digit numbers listed in the question;
- ``alphabetical``: which of four listed words comes first in alphabetical order;
- ``science``: chemical symbols (both directions), planets' order from the Sun, fixed facts;
- ``arithmetic``: addition, subtraction, multiplication of small integers (answer computed);
- ``units``: unit conversions from a table of exact factors (answer computed).

The default (:data:`CATEGORIES`) is the first four: measured with the real harvest of the two
embedded models (benchmarks/RESULTS.md, "Embedded default"), Gemma-3-270m is clearly the better
expert on the first three and SmolLM2-135M-Instruct on ``smallest``, so the gate and the selection
have something to gain over the best single expert. The others stay available through
``data.categories`` (on ``alphabetical`` both models were at chance).

Prompts are short (one line) so that harvesting real models on a CPU stays fast. This module also
reads user prompt files (Parquet or JSONL) into the ``prompts`` table schema, with row-level
validation (:func:`load_prompt_file`).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moe2.data.tables import PROMPTS_SCHEMA, assign_splits, prompt_id_for_text
from moe2.errors import ConfigError, DataError

N_OPTIONS = 4


@dataclass(frozen=True)
class Question:
    """One generated multiple-choice question."""

    prompt_id: str
    text: str
    category: str
    choices: tuple[str, ...]
    answer: str


# ------------------------------------------------------------------------------------------ tables
# country -> (capital, continent)
COUNTRIES: dict[str, tuple[str, str]] = {
    "France": ("Paris", "Europe"), "Germany": ("Berlin", "Europe"), "Italy": ("Rome", "Europe"),
    "Spain": ("Madrid", "Europe"), "Portugal": ("Lisbon", "Europe"), "Greece": ("Athens", "Europe"),
    "Austria": ("Vienna", "Europe"), "Poland": ("Warsaw", "Europe"), "Sweden": ("Stockholm", "Europe"),
    "Norway": ("Oslo", "Europe"), "Finland": ("Helsinki", "Europe"), "Denmark": ("Copenhagen", "Europe"),
    "Ireland": ("Dublin", "Europe"), "Hungary": ("Budapest", "Europe"), "Belgium": ("Brussels", "Europe"),
    "Netherlands": ("Amsterdam", "Europe"), "Czechia": ("Prague", "Europe"), "Russia": ("Moscow", "Europe"),
    "United Kingdom": ("London", "Europe"), "Switzerland": ("Bern", "Europe"),
    "Japan": ("Tokyo", "Asia"), "China": ("Beijing", "Asia"), "India": ("New Delhi", "Asia"),
    "South Korea": ("Seoul", "Asia"), "Thailand": ("Bangkok", "Asia"), "Vietnam": ("Hanoi", "Asia"),
    "Indonesia": ("Jakarta", "Asia"), "Philippines": ("Manila", "Asia"), "Iran": ("Tehran", "Asia"),
    "Iraq": ("Baghdad", "Asia"), "Turkey": ("Ankara", "Asia"), "Pakistan": ("Islamabad", "Asia"),
    "Egypt": ("Cairo", "Africa"), "Kenya": ("Nairobi", "Africa"), "Nigeria": ("Abuja", "Africa"),
    "Ethiopia": ("Addis Ababa", "Africa"), "Morocco": ("Rabat", "Africa"), "Ghana": ("Accra", "Africa"),
    "Senegal": ("Dakar", "Africa"), "Algeria": ("Algiers", "Africa"),
    "Canada": ("Ottawa", "North America"), "Mexico": ("Mexico City", "North America"),
    "United States": ("Washington", "North America"), "Cuba": ("Havana", "North America"),
    "Brazil": ("Brasilia", "South America"), "Argentina": ("Buenos Aires", "South America"),
    "Peru": ("Lima", "South America"), "Chile": ("Santiago", "South America"),
    "Colombia": ("Bogota", "South America"), "Australia": ("Canberra", "Oceania"),
    "New Zealand": ("Wellington", "Oceania"),
}  # fmt: skip

# element -> symbol
ELEMENTS: dict[str, str] = {
    "hydrogen": "H", "helium": "He", "lithium": "Li", "carbon": "C", "nitrogen": "N", "oxygen": "O",
    "fluorine": "F", "neon": "Ne", "sodium": "Na", "magnesium": "Mg", "aluminium": "Al",
    "silicon": "Si", "phosphorus": "P", "sulfur": "S", "chlorine": "Cl", "argon": "Ar",
    "potassium": "K", "calcium": "Ca", "iron": "Fe", "copper": "Cu", "zinc": "Zn", "silver": "Ag",
    "gold": "Au", "tin": "Sn", "lead": "Pb", "mercury": "Hg", "uranium": "U", "nickel": "Ni",
    "cobalt": "Co", "platinum": "Pt", "iodine": "I", "tungsten": "W", "titanium": "Ti",
    "chromium": "Cr", "manganese": "Mn", "boron": "B",
}  # fmt: skip

PLANETS: tuple[str, ...] = (
    "Mercury",
    "Venus",
    "Earth",
    "Mars",
    "Jupiter",
    "Saturn",
    "Uranus",
    "Neptune",
)
ORDINALS: tuple[str, ...] = (
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
)

# (question, answer, distractors) checked by hand; the generator verifies distinctness
SCIENCE_FACTS: tuple[tuple[str, str, tuple[str, str, str]], ...] = (
    ("At what temperature in Celsius does water boil at sea level?", "100", ("50", "0", "212")),
    ("At what temperature in Celsius does water freeze?", "0", ("100", "-10", "32")),
    ("What gas do plants absorb from the air?", "carbon dioxide", ("oxygen", "helium", "neon")),
    ("What gas do humans need to breathe?", "oxygen", ("carbon dioxide", "helium", "argon")),
    ("How many legs does an insect have?", "6", ("8", "4", "10")),
    ("How many legs does a spider have?", "8", ("6", "4", "10")),
    ("Which planet is known as the red planet?", "Mars", ("Venus", "Jupiter", "Saturn")),
    ("What is the largest planet of the solar system?", "Jupiter", ("Earth", "Mars", "Mercury")),
    ("What is the closest star to the Earth?", "the Sun", ("Sirius", "Polaris", "Vega")),
    ("What organ pumps blood through the body?", "heart", ("lung", "liver", "kidney")),
    ("What force pulls objects toward the Earth?", "gravity", ("magnetism", "friction", "tension")),
    ("How many bones are in the adult human body?", "206", ("106", "306", "156")),
    ("What is the chemical formula of water?", "H2O", ("CO2", "O2", "NaCl")),
    (
        "What is the speed of light in km per second, approximately?",
        "300000",
        ("3000", "30000", "3000000"),
    ),
    ("What part of the cell holds the DNA?", "nucleus", ("membrane", "ribosome", "cytoplasm")),
    ("What is the hardest natural substance?", "diamond", ("iron", "quartz", "granite")),
)

ANTONYMS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("up", "down"), ("open", "closed"), ("early", "late"), ("rich", "poor"), ("strong", "weak"),
    ("young", "old"), ("wet", "dry"), ("hard", "soft"), ("high", "low"), ("full", "empty"),
    ("thick", "thin"), ("loud", "quiet"), ("clean", "dirty"), ("true", "false"), ("win", "lose"),
    ("buy", "sell"), ("push", "pull"), ("inside", "outside"), ("before", "after"), ("love", "hate"),
    ("begin", "end"), ("friend", "enemy"), ("heavy", "light"), ("long", "short"), ("wide", "narrow"),
    ("sharp", "dull"), ("cheap", "expensive"), ("safe", "dangerous"), ("simple", "complex"),
    ("accept", "refuse"), ("arrive", "leave"), ("remember", "forget"), ("increase", "decrease"),
    ("maximum", "minimum"), ("north", "south"), ("east", "west"), ("day", "night"),
    ("question", "answer"), ("victory", "defeat"), ("ancient", "modern"), ("brave", "cowardly"),
    ("polite", "rude"), ("smooth", "rough"), ("awake", "asleep"), ("entrance", "exit"),
)  # fmt: skip

SYNONYMS: tuple[tuple[str, str], ...] = (
    ("big", "large"), ("small", "tiny"), ("fast", "quick"), ("happy", "glad"), ("begin", "start"),
    ("end", "finish"), ("angry", "mad"), ("smart", "clever"), ("shut", "close"), ("gift", "present"),
    ("rich", "wealthy"), ("sick", "ill"), ("choose", "pick"), ("help", "assist"), ("buy", "purchase"),
    ("hard", "difficult"), ("easy", "simple"), ("near", "close"), ("scared", "afraid"), ("car", "automobile"),
)  # fmt: skip

# (singular unit, plural unit, multiplier, target unit plural)
UNITS: tuple[tuple[str, str, int, str], ...] = (
    ("kilometre", "kilometres", 1000, "metres"), ("metre", "metres", 100, "centimetres"),
    ("centimetre", "centimetres", 10, "millimetres"), ("kilogram", "kilograms", 1000, "grams"),
    ("litre", "litres", 1000, "millilitres"), ("hour", "hours", 60, "minutes"),
    ("minute", "minutes", 60, "seconds"), ("day", "days", 24, "hours"), ("week", "weeks", 7, "days"),
    ("year", "years", 12, "months"), ("foot", "feet", 12, "inches"), ("yard", "yards", 3, "feet"),
    ("dozen", "dozen", 12, "items"), ("tonne", "tonnes", 1000, "kilograms"),
    ("kilobyte", "kilobytes", 1000, "bytes"), ("century", "centuries", 100, "years"),
)  # fmt: skip


# kind -> members; every word belongs to exactly one kind (no "orange": fruit and colour)
KINDS: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "cherry", "grape", "mango", "peach", "pear", "plum", "lemon",
              "melon", "kiwi", "apricot"),
    "animal": ("dog", "horse", "tiger", "rabbit", "elephant", "monkey", "zebra", "camel", "wolf",
               "fox", "giraffe", "bear"),
    "vehicle": ("car", "bus", "truck", "bicycle", "train", "airplane", "boat", "tractor", "scooter",
                "taxi", "helicopter", "motorcycle"),
    "tool": ("hammer", "saw", "wrench", "drill", "shovel", "screwdriver", "axe", "pliers", "chisel",
             "rake", "ladder", "spanner"),
    "colour": ("red", "blue", "green", "yellow", "purple", "brown", "pink", "grey", "black",
               "white", "violet", "turquoise"),
    "instrument": ("piano", "guitar", "violin", "drum", "flute", "trumpet", "cello", "harp", "banjo",
                   "clarinet", "trombone", "saxophone"),
    "body part": ("hand", "foot", "knee", "elbow", "shoulder", "finger", "ankle", "wrist", "nose",
                  "ear", "chin", "thumb"),
}  # fmt: skip

# plain English words of 3-9 letters for the alphabetical-order family (no two share a prefix
# that makes the order depend on case or punctuation; all lower case)
ORDER_WORDS: tuple[str, ...] = (
    "anchor", "basket", "candle", "desert", "engine", "forest", "guitar", "harbor", "island",
    "jacket", "kettle", "ladder", "magnet", "needle", "orchid", "pepper", "quartz", "rocket",
    "saddle", "tunnel", "valley", "walnut", "yogurt", "zipper", "bridge", "castle", "dragon",
    "falcon", "garden", "helmet", "lemon", "marble", "napkin", "parrot", "rabbit", "silver",
    "timber", "velvet", "window", "butter",
)  # fmt: skip


# --------------------------------------------------------------------------------------- helpers
def _pick_distractors(
    rng: random.Random, answer: str, pool: Sequence[str], exclude: Sequence[str] = ()
) -> list[str]:
    cands = sorted({p for p in pool if p != answer and p not in exclude})
    if len(cands) < N_OPTIONS - 1:
        raise DataError(f"not enough distractors for {answer!r}")
    return rng.sample(cands, N_OPTIONS - 1)


def _make(
    rng: random.Random, category: str, text: str, answer: str, distractors: Sequence[str]
) -> Question:
    options = [answer, *distractors]
    # the generator verifies its own output: distinct options, the answer exactly once
    if len(set(options)) != N_OPTIONS or options.count(answer) != 1:
        raise DataError(f"generator produced bad options {options} for {text!r}")
    rng.shuffle(options)
    pid = prompt_id_for_text(f"{category}\n{text}")
    return Question(pid, text, category, tuple(options), answer)


def _numeric_distractors(rng: random.Random, value: int, spread: Sequence[int]) -> list[str]:
    cands = sorted({value + d for d in spread if d != 0 and value + d >= 0} - {value})
    return [str(x) for x in rng.sample(cands, N_OPTIONS - 1)]


def _distinct(
    n: int, family: str, draw: Callable[[], tuple[str, Callable[[], Question]]]
) -> list[Question]:
    """``n`` questions of distinct keys from ``draw() -> (key, build)``.

    ``build`` runs only for a new key, so a repeated draw consumes no further random numbers.
    """
    out: dict[str, Question] = {}
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n:
            raise ConfigError(f"{family}: cannot generate {n} distinct questions")
        key, build = draw()
        if key not in out:
            out[key] = build()
    return list(out.values())


# ------------------------------------------------------------------------------------ categories
def gen_arithmetic(rng: random.Random, n: int) -> list[Question]:
    """Addition, subtraction and multiplication; the answer is computed."""
    ops: dict[str, Callable[[int, int], int]] = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
    }
    words = {"+": "plus", "-": "minus", "*": "times"}

    def draw() -> tuple[str, Callable[[], Question]]:
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 12)
        else:
            a, b = rng.randint(10, 99), rng.randint(1, 99)
            if op == "-" and b > a:
                a, b = b, a
        value = ops[op](a, b)
        text = f"What is {a} {words[op]} {b}?"
        spread = (-10, -2, -1, 1, 2, 10, a, -b) if op != "*" else (-a, a, -b, b, -1, 1, 10)
        return text, lambda: _make(
            rng, "arithmetic", text, str(value), _numeric_distractors(rng, value, spread)
        )

    return _distinct(n, "arithmetic", draw)


def gen_units(rng: random.Random, n: int) -> list[Question]:
    """Unit conversions with exact factors; the answer is computed."""

    def draw() -> tuple[str, Callable[[], Question]]:
        sing, plural, factor, target = rng.choice(UNITS)
        k = rng.randint(1, 9)
        text = f"How many {target} are in {k} {sing if k == 1 else plural}?"
        value = k * factor
        cands = {
            value * 10,
            value // 10 if value % 10 == 0 else value + factor,
            value + factor,
            max(1, value - factor),
            k * (factor + 1),
            k,
        }
        cands.discard(value)

        def build() -> Question:
            distractors = [str(x) for x in rng.sample(sorted(cands), N_OPTIONS - 1)]
            return _make(rng, "units", text, str(value), distractors)

        return text, build

    return _distinct(n, "units", draw)


def _all_geography(rng: random.Random) -> list[Question]:
    capitals = [c for c, _ in COUNTRIES.values()]
    continents = sorted({k for _, k in COUNTRIES.values()})
    qs = []
    for country, (capital, continent) in COUNTRIES.items():
        qs.append(
            _make(
                rng,
                "geography",
                f"What is the capital of {country}?",
                capital,
                _pick_distractors(rng, capital, capitals),
            )
        )
        others = [k for k, (c, _) in COUNTRIES.items() if k != country]
        qs.append(
            _make(
                rng,
                "geography",
                f"{capital} is the capital of which country?",
                country,
                _pick_distractors(rng, country, others),
            )
        )
        qs.append(
            _make(
                rng,
                "geography",
                f"On which continent is {country}?",
                continent,
                _pick_distractors(rng, continent, continents),
            )
        )
    return qs


def _all_science(rng: random.Random) -> list[Question]:
    symbols = list(ELEMENTS.values())
    names = list(ELEMENTS)
    qs = []
    for name, sym in ELEMENTS.items():
        qs.append(
            _make(
                rng,
                "science",
                f"What is the chemical symbol of {name}?",
                sym,
                _pick_distractors(rng, sym, symbols),
            )
        )
        qs.append(
            _make(
                rng,
                "science",
                f"Which element has the chemical symbol {sym}?",
                name,
                _pick_distractors(rng, name, names),
            )
        )
    for i, planet in enumerate(PLANETS):
        qs.append(
            _make(
                rng,
                "science",
                f"Which planet is the {ORDINALS[i]} from the Sun?",
                planet,
                _pick_distractors(rng, planet, PLANETS),
            )
        )
    for text, ans, dis in SCIENCE_FACTS:
        qs.append(_make(rng, "science", text, ans, list(dis)))
    return qs


def _all_word_sense(rng: random.Random) -> list[Question]:
    words = sorted({w for pair in ANTONYMS for w in pair})
    # a word may have several antonyms in the table (light: dark, heavy): never offer another one
    opposites: dict[str, set[str]] = {}
    for a, b in ANTONYMS:
        opposites.setdefault(a, set()).add(b)
        opposites.setdefault(b, set()).add(a)
    qs = []
    seen: set[str] = set()
    for a, b in ANTONYMS:
        for w, ans in ((a, b), (b, a)):
            text = f"What is the opposite of '{w}'?"
            if text in seen:
                continue
            seen.add(text)
            excl = [w, *opposites[w]]
            qs.append(
                _make(
                    rng, "word_sense", text, ans, _pick_distractors(rng, ans, words, exclude=excl)
                )
            )
    syn_words = sorted({w for pair in SYNONYMS for w in pair})
    related: dict[str, set[str]] = {}
    for a, b in SYNONYMS:
        related.setdefault(a, set()).add(b)
        related.setdefault(b, set()).add(a)
    for w, ans in SYNONYMS:
        text = f"Which word means the same as '{w}'?"
        excl = [w, *related[w], *opposites.get(w, ())]
        qs.append(
            _make(
                rng, "word_sense", text, ans, _pick_distractors(rng, ans, syn_words, exclude=excl)
            )
        )
    return qs


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items)


def gen_smallest(rng: random.Random, n: int) -> list[Question]:
    """The smallest of four listed two-digit numbers; the options are the listed numbers."""

    def draw() -> tuple[str, Callable[[], Question]]:
        nums = rng.sample(range(10, 100), N_OPTIONS)
        value = min(nums)
        text = f"Which number is the smallest: {_listed([str(x) for x in nums])}?"
        return text, lambda: _make(
            rng, "smallest", text, str(value), [str(x) for x in nums if x != value]
        )

    return _distinct(n, "smallest", draw)


def gen_alphabetical(rng: random.Random, n: int) -> list[Question]:
    """The word of four listed words that comes first in alphabetical order."""

    def draw() -> tuple[str, Callable[[], Question]]:
        words = rng.sample(ORDER_WORDS, N_OPTIONS)
        first = min(words)
        text = f"Which word comes first in alphabetical order: {_listed(words)}?"
        return text, lambda: _make(
            rng, "alphabetical", text, first, [w for w in words if w != first]
        )

    return _distinct(n, "alphabetical", draw)


def gen_kinds(rng: random.Random, n: int) -> list[Question]:
    """Which of four words is of a given kind (fruit, tool...); the others are of other kinds."""
    kinds = sorted(KINDS)

    def draw() -> tuple[str, Callable[[], Question]]:
        kind = rng.choice(kinds)
        answer = rng.choice(KINDS[kind])
        others = rng.sample([k for k in kinds if k != kind], N_OPTIONS - 1)
        article = "an" if kind[0] in "aeiou" else "a"
        text = f"Which of these is {article} {kind}?"
        q = _make(rng, "kinds", text, answer, [rng.choice(KINDS[k]) for k in others])
        # one question text has many option sets: the id (and the key) covers the options
        key = f"kinds\n{text}\n{' | '.join(sorted(q.choices))}"
        return key, lambda: Question(
            prompt_id_for_text(key), q.text, q.category, q.choices, q.answer
        )

    return _distinct(n, "kinds", draw)


GENERATED: dict[str, Callable[[random.Random, int], list[Question]]] = {
    "arithmetic": gen_arithmetic,
    "units": gen_units,
    "smallest": gen_smallest,
    "alphabetical": gen_alphabetical,
    "kinds": gen_kinds,
}
TABULATED: dict[str, Callable[[random.Random], list[Question]]] = {
    "geography": _all_geography,
    "science": _all_science,
    "word_sense": _all_word_sense,
}
#: every family the generator knows (``data.categories`` picks among them)
FAMILIES: tuple[str, ...] = (*GENERATED, *TABULATED)
#: the default families (``data.categories: null``), chosen by harvesting both embedded models
#: (benchmarks/RESULTS.md, "Embedded default"): Gemma-3-270m is clearly the better one on the three
#: knowledge families, SmolLM2-135M-Instruct on ``smallest`` (alphabetical was measured a tie)
CATEGORIES: tuple[str, ...] = ("geography", "word_sense", "kinds", "smallest")


def generate_questions(
    n_per_category: int = 100, seed: int = 0, categories: Sequence[str] | None = None
) -> list[Question]:
    """The embedded dataset: ``n_per_category`` verified questions per category.

    Args:
        n_per_category: questions per category (table categories hold at most their table's size).
        seed: generation seed (same seed -> same questions, options and order).
        categories: families of :data:`FAMILIES` (default: :data:`CATEGORIES`).

    Raises:
        ConfigError: unknown category, or more questions asked than a table can give.
    """
    cats = list(categories or CATEGORIES)
    unknown = [c for c in cats if c not in FAMILIES]
    if unknown:
        raise ConfigError(f"unknown embedded categories {unknown}; choose from {list(FAMILIES)}")
    if n_per_category < 1:
        raise ConfigError("data.n_per_category must be >= 1")
    out: list[Question] = []
    for c in cats:
        # one RNG per category so that changing n or the category list does not reshuffle others
        rng = random.Random(f"{seed}:{c}")
        if c in GENERATED:
            qs = GENERATED[c](rng, n_per_category)
        else:
            every = TABULATED[c](rng)
            if n_per_category > len(every):
                raise ConfigError(
                    f"embedded category {c!r} has {len(every)} questions; data.n_per_category={n_per_category} is too many"
                )
            qs = rng.sample(every, n_per_category)
        out += qs
    ids = [q.prompt_id for q in out]
    if len(set(ids)) != len(ids):
        raise DataError("embedded dataset: duplicate prompt ids (duplicate question text)")
    return out


def questions_frame(questions: Sequence[Question], split_seed: int = 0) -> pd.DataFrame:
    """Questions as a ``prompts`` table (schema of :mod:`moe2.data.tables`), splits by seeded hash."""
    ids = [q.prompt_id for q in questions]
    return pd.DataFrame(
        {
            "prompt_id": ids,
            "text": [q.text for q in questions],
            "category": [q.category for q in questions],
            "split": assign_splits(ids, seed=split_seed),
            "choices": [list(q.choices) for q in questions],
            "answer": [q.answer for q in questions],
        }
    )


def write_prompts(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a prompts table atomically as Parquet (``.parquet``) or JSON lines (``.jsonl``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from moe2.utils.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in frame.to_dict(orient="records"):
                    f.write(
                        json.dumps(
                            {k: (list(v) if isinstance(v, tuple) else v) for k, v in rec.items()}
                        )
                        + "\n"
                    )
        elif path.suffix == ".parquet":
            table = pa.Table.from_pandas(
                frame[list(PROMPTS_SCHEMA.names)], schema=PROMPTS_SCHEMA, preserve_index=False
            )
            pq.write_table(table, tmp)
        else:
            raise ConfigError(f"{path}: write prompts as .parquet or .jsonl")
    return path


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def validate_prompt_rows(frame: pd.DataFrame, where: str, split_seed: int = 0) -> pd.DataFrame:
    """Check and complete a user prompts table; a bad row raises :class:`DataError` naming it.

    Required: ``text``, ``category``. Optional: ``prompt_id`` (default: hash of the text),
    ``split`` (default: seeded hash), ``choices`` (a list of >= 2 distinct strings) and
    ``answer`` (one of the choices; for free-form rows, the reference answer).
    """
    missing = [c for c in ("text", "category") if c not in frame.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; a prompt row needs text and category"
        )
    rows = []
    for i, rec in enumerate(frame.to_dict(orient="records")):
        text, cat = rec.get("text"), rec.get("category")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: row {i}: 'text' must be a non-empty string, got {text!r}")
        if not isinstance(cat, str) or not cat.strip():
            raise DataError(f"{where}: row {i}: 'category' must be a non-empty string, got {cat!r}")
        choices = rec.get("choices")
        answer = rec.get("answer")
        if _is_missing(choices):
            choices = None
        else:
            if isinstance(choices, str) or not hasattr(choices, "__iter__"):
                raise DataError(
                    f"{where}: row {i}: 'choices' must be a list of strings, got {choices!r}"
                )
            choices = [str(c) for c in choices]
            if (
                len(choices) < 2
                or len(set(choices)) != len(choices)
                or any(not c.strip() for c in choices)
            ):
                raise DataError(
                    f"{where}: row {i}: 'choices' must be >= 2 distinct non-empty strings, got {choices}"
                )
            if _is_missing(answer) or str(answer) not in choices:
                raise DataError(
                    f"{where}: row {i}: 'answer' {answer!r} is not one of its choices {choices}"
                )
        if choices is None and (_is_missing(answer) or not str(answer).strip()):
            raise DataError(
                f"{where}: row {i}: a free-form row (no choices) needs a reference 'answer'"
            )
        pid = rec.get("prompt_id")
        pid = prompt_id_for_text(text) if _is_missing(pid) else str(pid)
        rows.append(
            {
                "prompt_id": pid,
                "text": text,
                "category": cat,
                "choices": choices,
                "answer": str(answer),
                "split": rec.get("split"),
            }
        )
    out = pd.DataFrame(rows)
    dup = out["prompt_id"][out["prompt_id"].duplicated()]
    if len(dup):
        row = int(dup.index[0])
        raise DataError(f"{where}: row {row}: prompt_id {dup.iloc[0]!r} repeats an earlier row")
    need = out["split"].isna() | ~out["split"].isin(["train", "val", "test"])
    bad = out["split"].notna() & need
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{where}: row {row}: split {out['split'].iloc[row]!r} is not train/val/test"
        )
    if need.any():
        out.loc[need, "split"] = assign_splits(out.loc[need, "prompt_id"].tolist(), seed=split_seed)
    return out


def load_prompt_file(path: str | os.PathLike[str], split_seed: int = 0) -> pd.DataFrame:
    """Read a prompts file (``.parquet`` or ``.jsonl``/``.json`` lines) and validate every row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        frame = pq.read_table(path).to_pandas()
    elif path.suffix in (".jsonl", ".json"):
        recs = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {i + 1} is not valid JSON ({exc.msg})") from exc
                if not isinstance(rec, dict):
                    raise DataError(f"{path}: line {i + 1} must be a JSON object")
                recs.append(rec)
        frame = pd.DataFrame(recs)
    else:
        raise DataError(f"{path}: prompts must be .parquet or .jsonl")
    if len(frame) == 0:
        raise DataError(f"{path}: no prompts")
    return validate_prompt_rows(frame, str(path), split_seed)


def load_prompt_dataset(data_cfg: Any) -> pd.DataFrame:
    """The prompts of the ``data`` config: ``format: embedded`` or ``format: prompts`` (a file)."""
    fmt = str(data_cfg.get("format", "embedded"))
    split_seed = int(data_cfg.get("split_seed", 0) or 0)
    if fmt == "embedded":
        cats = data_cfg.get("categories")
        qs = generate_questions(
            int(data_cfg.get("n_per_category", 100)),
            int(data_cfg.get("seed", 0)),
            list(cats) if cats else None,
        )
        return questions_frame(qs, split_seed)
    if fmt == "prompts":
        path = data_cfg.get("path")
        if not path or str(path) == "???":
            raise ConfigError(
                "data.path is required for data=prompts (a .parquet or .jsonl prompts file)"
            )
        return load_prompt_file(path, split_seed)
    raise ConfigError(f"harvest reads data.format 'embedded' or 'prompts', got {fmt!r}")
