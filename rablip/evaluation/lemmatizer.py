"""A small rule-based English lemmatizer for nouns and verbs (spaCy is not a dependency).

BLIP-2 / LAVIS lemmatize OK-VQA predictions with spaCy (``token.lemma_`` for NOUN and VERB tokens),
and WebQA's QA-Acc lemmatizes both sides with spaCy. Without a tagger we cannot tell nouns from
other words, so this lemmatizer applies, word by word:

1. an irregular table (``men -> man``, ``children -> child``, ``ran -> run``, ``went -> go`` ...);
2. a list of words that only look inflected and are left alone (``bus``, ``glass``, ``ceiling``,
   ``news``, ``tennis`` ...), plus every word of three letters or fewer;
3. regular plural / third-person rules: ``-ies -> -y``, ``-ves -> -f`` (listed words only),
   ``-(ss|x|zz|ch|sh)es -> -\\1``, ``-s -> ''`` (not after ``s``, ``u``, ``i``);
4. regular ``-ing`` / ``-ed`` rules: strip the suffix when the stem keeps a vowel and is at least
   three letters, undouble a doubled final consonant (``running -> run``) and restore a final ``e``
   for a short list of stems (``riding -> ride``).

It approximates spaCy's lemmas; it is not equal to them. Scorer outputs say which lemmatizer ran.
"""

from __future__ import annotations

import re

LEMMATIZER_NAME = "rablip rule-based noun/verb lemmatizer (approximates spaCy lemma_)"

IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
    "geese": "goose", "mice": "mouse", "oxen": "ox", "people": "people", "dice": "die",
    "knives": "knife", "wives": "wife", "lives": "life", "leaves": "leaf", "wolves": "wolf",
    "shelves": "shelf", "halves": "half", "loaves": "loaf", "calves": "calf", "scarves": "scarf",
    "thieves": "thief", "cacti": "cactus", "fungi": "fungus", "octopi": "octopus",
    "ran": "run", "went": "go", "gone": "go", "ate": "eat", "eaten": "eat", "flew": "fly",
    "flown": "fly", "rode": "ride", "ridden": "ride", "swam": "swim", "swum": "swim",
    "drove": "drive", "driven": "drive", "wore": "wear", "worn": "wear", "made": "make",
    "sat": "sit", "stood": "stand", "held": "hold", "took": "take", "taken": "take",
    "caught": "catch", "thrown": "throw", "threw": "throw", "grew": "grow", "grown": "grow",
    "built": "build", "bought": "buy", "brought": "bring", "fell": "fall", "fallen": "fall",
    "lying": "lie", "dying": "die", "tying": "tie", "skiing": "ski", "having": "have",
    "coming": "come", "giving": "give", "living": "live", "using": "use", "used": "use",
    "buses": "bus", "gases": "gas", "lenses": "lens",
}

KEEP_AS_IS = frozenset(
    "bus gas glass grass class pass mass dress cross boss moss chess kiss less press this his hers "
    "its is was has does yes us plus thus lens series species news tennis christmas always various "
    "famous jeans pants scissors glasses clothes physics mathematics bonus campus cactus circus "
    "virus status octopus walrus hippopotamus asparagus citrus hibiscus iris analysis basis axis "
    "oasis crisis chassis canvas atlas texas paris mattress fries sneakers shorts headphones "
    "ceiling king ring thing something nothing everything anything morning evening wedding "
    "clothing sibling string spring swing wing sing bring building painting ping pudding "
    "icing frosting stuffing topping ing bed red shed sled need feed seed speed weed bread "
    "hundred sacred naked wicked wretched beloved kindred".split()
)

RESTORE_E = frozenset(
    "rid rac driv skat danc div writ hid bak ris smil mak tak shak slid glid chas rais "
    "us los mov serv sav wav shav bik hik rac pos clos leav sneez snooz graz pric"
    .split()
)

F_PLURALS = frozenset("loaves calves halves".split())

_VOWEL = re.compile(r"[aeiouy]")
_DOUBLE_CONSONANT = re.compile(r"([bdfgkmnprtv])\1$")


def _strip_suffix(word: str, suffix: str) -> str | None:
    """The stem of ``word`` without an ``-ing``/``-ed`` ``suffix``, or None when the rule does not apply."""
    if not word.endswith(suffix) or word.endswith("eed"):
        return None
    stem = word[: -len(suffix)]
    if len(stem) < 3 or not _VOWEL.search(stem):
        return None
    if _DOUBLE_CONSONANT.search(stem):
        return stem[:-1]
    if stem in RESTORE_E:
        return stem + "e"
    if suffix == "ed" and stem.endswith("i"):
        return stem[:-1] + "y"
    return stem


def lemmatize_word(word: str) -> str:
    """The lemma of one lower-case word (see the module docstring for the rules)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if len(word) <= 3 or word in KEEP_AS_IS or not word.isalpha():
        return word
    for suffix in ("ing", "ed"):
        stem = _strip_suffix(word, suffix)
        if stem is not None:
            return stem
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("ves") and word in F_PLURALS:
        return word[:-3] + "f"
    if re.search(r"(ss|x|zz|ch|sh)es$", word):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def lemmatize_text(text: str) -> str:
    """Lemmatize each whitespace-separated word of ``text`` (case kept for words left alone)."""
    words = []
    for word in text.split(" "):
        lemma = lemmatize_word(word.lower())
        words.append(word if lemma == word.lower() else lemma)
    return " ".join(words)
