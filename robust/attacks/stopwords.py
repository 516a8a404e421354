"""Words a text attack never replaces and never substitutes in: stop-words and punctuation.

BERT-Attack as used by Co-Attack and SGA skips function words (swapping "the" for "a" says
nothing about a model's robustness) and drops MLM suggestions that are function words or
punctuation. The words here are the ones that reference filter list holds (about 250: an
English stop-word list and contraction fragments; e.g. "has", "be" and "do" are *not* in
it, so they stay attackable as there), plus a wider set of punctuation marks, which cleaned
captions rarely contain anyway. Keeping the same words keeps the baseline comparable. It is
data, kept apart from the attack code.
"""

from __future__ import annotations

_ARTICLES_AND_DETERMINERS = """
a an the this that these those some any all both either neither no none another other
others such same whole enough
"""

_PRONOUNS = """
i me my mine myself we our ours ourselves you your yours yourself yourselves he him his
himself she her hers herself it its itself they them their theirs themselves who whom
whose which what whatever whoever anyone anything everyone everything nobody noone
nothing something somehow sometime somewhere anyhow anyway anywhere everywhere nowhere
elsewhere
"""

_PREPOSITIONS = """
about above across after against along among amongst around as at before behind below
beside besides between beyond by down during except for from in into of off on onto out
over per through throughout thru to toward towards under until up upon with within
without
"""

_CONJUNCTIONS_AND_ADVERBS = """
and but or nor if unless although while whereas whether than then thus hence therefore
however moreover nevertheless otherwise meanwhile afterwards beforehand again already also
almost alone even ever never once only just indeed namely yet too mostly least more most
now here there when where why how whence whither
whenever wherever whereafter whereby wherein whereupon hereafter hereby herein hereupon
thereafter thereby therein thereupon thence else first former formerly latter latterly
next back due
"""

_VERBS_AND_AUXILIARIES = """
am is are was were been being can cannot could may must would used please
"""

_NEGATIONS_AND_CONTRACTIONS = """
not ain aren aren't couldn couldn't didn didn't doesn doesn't don don't hadn hadn't hasn
hasn't haven haven't isn isn't it's mightn mightn't mustn mustn't needn needn't shan
shan't she's should've shouldn shouldn't that'll wasn wasn't weren weren't won won't
wouldn wouldn't you'd you'll you're you've
"""

_FRAGMENTS_AND_NUMBERS = """
b d ll o s t ve y one hundred empty
"""

_PUNCTUATION = """
. , ; : ! ? " ' ` - -- / \\ ( ) [ ] { } < > | & @ # % ^ * + = ~ _ $ ～ · … – —
"""

FILTER_WORDS: frozenset[str] = frozenset(
    " ".join(
        (
            _ARTICLES_AND_DETERMINERS,
            _PRONOUNS,
            _PREPOSITIONS,
            _CONJUNCTIONS_AND_ADVERBS,
            _VERBS_AND_AUXILIARIES,
            _NEGATIONS_AND_CONTRACTIONS,
            _FRAGMENTS_AND_NUMBERS,
            _PUNCTUATION,
        )
    ).split()
)
"""Lower-case words and punctuation marks that are never attacked nor used as substitutes."""


def is_filter_word(word: str) -> bool:
    """True for a stop-word or punctuation mark (case-insensitive), which the attack skips."""
    return word.lower() in FILTER_WORDS
