"""Caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D) computed offline, the COCO-caption way.

The numbers follow the conventions of the COCO caption evaluation code (pycocoevalcap), so they
can be compared with published captioning results, but nothing here needs Java or downloads:

- **Tokenisation** (`tokenize`) is a small deterministic stand-in for the Stanford PTB
  tokenizer that COCO runs (through Java) before scoring: lower-case; split PTB clitics
  (``don't`` -> ``do n't``, ``dog's`` -> ``dog 's``, ``cannot`` -> ``can not``); keep numbers
  (``3.5``, ``10:30``), acronyms (``u.s.``), common abbreviations (``mr.``, ``st.``) and
  hyphenated or slashed words (``t-shirt``, ``black/white``) whole; then drop the tokens on
  COCO's punctuation list (``. , ? ! ; : - -- ... ' " `` and quotes). Brackets become
  ``-lrb-``/``-rrb-`` (and ``-lsb-``, ``-lcb-`` ...) and *stay*, as they do in the official
  scores: COCO lower-cases before removing its upper-case ``-LRB-`` entries. Runs such as
  ``!!`` stay too. Checked token-for-token against the Java tokenizer on ~1600 captions; the
  known differences are rare PTB rules not reproduced here (``rock'n'roll`` -> ``rock 'n'
  roll``, ``x....`` -> ``x.``, PTB's long abbreviation list, other symbols such as ``&`` or
  ``$`` inside words).
- **BLEU** is corpus-level with the "closest" reference length, exactly as pycocoevalcap's
  `Bleu` scorer: clipped n-gram matches and candidate n-gram counts are summed over the
  corpus, BLEU-n is the geometric mean of the first n precisions times one brevity penalty.
  Each precision is ``(matches + 1e-15) / (candidates + 1e-9)`` like pycocoevalcap's
  tiny/small guards; so a precision with no candidate n-grams is 1e-6 rather than undefined,
  and BLEU-n is tiny but not exactly 0 when no n-gram matched.
- **ROUGE-L** is pycocoevalcap's per-caption F-measure (beta = 1.2), taking the best LCS
  precision and the best LCS recall over the references (possibly from different references),
  averaged over images.
- **CIDEr** is pycocoevalcap's `Cider` (CIDEr-D style: tf-idf n-grams n = 1..4, document
  frequencies from the evaluated corpus's reference sets, clipped numerator, Gaussian length
  penalty with sigma = 6, times 10). With a single image every reference n-gram has idf 0, so
  CIDEr is 0: it is only meaningful on a corpus.

All scores are in [0, 1] except CIDEr, in [0, 10]. Inputs are one generated caption per image
and, per image, a list of reference captions; an empty generated caption is allowed and scores 0.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from robust.errors import RobustError

if TYPE_CHECKING:  # the n-gram metrics (and the report, via eval.bias) need no torch
    import torch

__all__ = [
    "CaptionInputError",
    "bleu",
    "caption_change_rate",
    "caption_metrics",
    "cider",
    "cider_scores",
    "embedding_similarity",
    "rouge_l",
    "rouge_l_scores",
    "tokenize",
]

Tokenizer = Callable[[str], list[str]]
NGram = tuple[str, ...]

BLEU_MAX_N = 4
ROUGE_BETA = 1.2
CIDER_MAX_N = 4
CIDER_SIGMA = 6.0
# pycocoevalcap's guards in every BLEU precision: (matches + TINY) / (candidates + SMALL).
BLEU_TINY = 1e-15
BLEU_SMALL = 1e-9

# Tokens the COCO PTBTokenizer removes after tokenising; multi-character ones ("--", "...")
# come out of `_TOKEN_RE` one character at a time, so single characters suffice here.
_PUNCTUATION = frozenset(".,?!;:-'\"`…–—")
# PTB spells brackets as -LRB- etc.; COCO lower-cases before its removal list (which names the
# upper-case forms), so these survive as tokens in the official scores and are kept here too.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"'})
_CANNOT_RE = re.compile(r"\bcannot\b")
_NOT_CLITIC_RE = re.compile(r"(\w)(n't)(?!\w)")
_CLITIC_RE = re.compile(r"(\w)('(?:s|re|ve|ll|d|m))(?!\w)")
_TOKEN_RE = re.compile(
    r"n't(?!\w)|'(?:s|re|ve|ll|d|m)(?!\w)"  # clitics split off above
    r"|\d+(?:[.,:]\d+)+"  # 3.5, 1,000, 10:30 stay whole as in PTB
    r"|[^\W\d_](?:\.[^\W\d_])+\.?(?!\w)"  # acronyms: u.s.a.
    r"|(?:mrs?|ms|dr|st|jr|sr|vs|prof|mt|ft|ave|inc|co|etc)\.|no\.(?=\s*\d)"  # PTB abbreviations
    r"|[!?]{2,}"  # PTB keeps runs such as "!!" or "?!" (only single marks are on COCO's list)
    r"|[#@]?\w+(?:[-'&/]\w+)*"  # words keep inner - ' & /: t-shirt, o'clock, black/white
    r"|[^\w\s]"  # any other symbol, one character per token
)


class CaptionInputError(RobustError, ValueError):
    """Captions or references that cannot be scored (mismatched lengths, missing references)."""


def tokenize(text: str) -> list[str]:
    """PTB-like tokens of a caption, lower-cased and without punctuation (see module doc)."""
    text = _CANNOT_RE.sub("can not", text.translate(_QUOTES).lower())
    text = _NOT_CLITIC_RE.sub(r"\1 \2", text)
    text = _CLITIC_RE.sub(r"\1 \2", text)
    tokens = (_BRACKETS.get(tok, tok) for tok in _TOKEN_RE.findall(text))
    return [tok for tok in tokens if tok not in _PUNCTUATION]


def _check_inputs(
    generated: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    """Fails with one clear line on the usual mistakes instead of a silent wrong score."""
    if isinstance(generated, str):
        raise CaptionInputError(
            "generated must be a list of captions (one per image), not a single string"
        )
    if isinstance(references, str):
        raise CaptionInputError(
            "references must be a list of reference-caption lists (one list per image)"
        )
    gen = list(generated)
    refs = list(references)
    if len(gen) != len(refs):
        raise CaptionInputError(
            f"{len(gen)} generated captions but {len(refs)} reference lists; "
            "pass exactly one list of references per image"
        )
    if not gen:
        raise CaptionInputError("no captions to score; pass at least one image's captions")
    for i, caption in enumerate(gen):
        if not isinstance(caption, str):
            raise CaptionInputError(
                f"generated[{i}] is {type(caption).__name__}, not a caption string"
            )
    out: list[list[str]] = []
    for i, image_refs in enumerate(refs):
        if isinstance(image_refs, str):
            raise CaptionInputError(
                f"references[{i}] is a single string; wrap it in a list: [{image_refs!r}]"
            )
        image_refs = list(image_refs)
        if not image_refs:
            raise CaptionInputError(
                f"image {i} has no reference captions; every image needs at least one"
            )
        for j, ref in enumerate(image_refs):
            if not isinstance(ref, str):
                raise CaptionInputError(
                    f"references[{i}][{j}] is {type(ref).__name__}, not a caption string"
                )
        out.append(image_refs)
    return gen, out


def _tokenized(
    generated: Sequence[str], references: Sequence[Sequence[str]], tokenizer: Tokenizer
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Validated, tokenised corpus; empty references are rejected since nothing can match them."""
    gen, refs = _check_inputs(generated, references)
    hyp_tokens = [tokenizer(caption) for caption in gen]
    ref_tokens: list[list[list[str]]] = []
    for i, image_refs in enumerate(refs):
        toks = [tokenizer(ref) for ref in image_refs]
        for j, tok in enumerate(toks):
            if not tok:
                raise CaptionInputError(
                    f"references[{i}][{j}] ({image_refs[j]!r}) has no words after "
                    "tokenisation; remove or fix that reference caption"
                )
        ref_tokens.append(toks)
    return hyp_tokens, ref_tokens


def _ngrams(tokens: Sequence[str], max_n: int) -> Counter[NGram]:
    """Counts of all n-grams with 1 <= n <= max_n."""
    counts: Counter[NGram] = Counter()
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - n + 1):
            counts[tuple(tokens[start : start + n])] += 1
    return counts


def _bleu_tokens(
    hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]], max_n: int
) -> list[float]:
    """Corpus BLEU-1..max_n on tokenised input (pycocoevalcap's "closest" option)."""
    matches = [0] * max_n
    candidates = [0] * max_n
    hyp_len = 0
    ref_len = 0
    for hyp, image_refs in zip(hyps, refs, strict=True):
        max_ref_counts: dict[NGram, int] = {}
        for ref in image_refs:
            for gram, count in _ngrams(ref, max_n).items():
                if count > max_ref_counts.get(gram, 0):
                    max_ref_counts[gram] = count
        for gram, count in _ngrams(hyp, max_n).items():
            matches[len(gram) - 1] += min(count, max_ref_counts.get(gram, 0))
        for n in range(1, max_n + 1):
            candidates[n - 1] += max(0, len(hyp) - n + 1)
        hyp_len += len(hyp)
        # closest reference length; ties go to the shorter reference, as in pycocoevalcap
        ref_len += min((abs(len(ref) - len(hyp)), len(ref)) for ref in image_refs)[1]

    scores: list[float] = []
    product = 1.0
    for n in range(max_n):
        product *= (matches[n] + BLEU_TINY) / (candidates[n] + BLEU_SMALL)
        scores.append(product ** (1.0 / (n + 1)))
    ratio = (hyp_len + BLEU_TINY) / (ref_len + BLEU_SMALL)
    if ratio < 1.0:
        penalty = math.exp(1.0 - 1.0 / ratio)
        scores = [score * penalty for score in scores]
    return scores


def bleu(
    generated: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    max_n: int = BLEU_MAX_N,
    tokenizer: Tokenizer = tokenize,
) -> list[float]:
    """Corpus BLEU-1..max_n (COCO conventions); `tokenizer=str.split` takes pre-tokenised text."""
    if max_n < 1:
        raise CaptionInputError(f"max_n must be at least 1 for BLEU, got {max_n}")
    hyps, refs = _tokenized(generated, references, tokenizer)
    return _bleu_tokens(hyps, refs, max_n)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0] * (len(b) + 1)
        for j, other in enumerate(b, start=1):
            if token == other:
                current[j] = previous[j - 1] + 1
            else:
                current[j] = max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def _rouge_l_tokens(hyp: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """pycocoevalcap's ROUGE-L of one caption: best precision and best recall over refs."""
    if not hyp:
        return 0.0
    best_precision = 0.0
    best_recall = 0.0
    for ref in refs:
        lcs = _lcs_length(ref, hyp)
        best_precision = max(best_precision, lcs / len(hyp))
        best_recall = max(best_recall, lcs / len(ref))
    if best_precision == 0.0 or best_recall == 0.0:
        return 0.0
    beta2 = ROUGE_BETA**2
    return (1 + beta2) * best_precision * best_recall / (best_recall + beta2 * best_precision)


def rouge_l_scores(
    generated: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenizer: Tokenizer = tokenize,
) -> list[float]:
    """ROUGE-L per image, kept so that per-image changes under attack can be inspected."""
    hyps, refs = _tokenized(generated, references, tokenizer)
    return [_rouge_l_tokens(hyp, image_refs) for hyp, image_refs in zip(hyps, refs, strict=True)]


def rouge_l(
    generated: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenizer: Tokenizer = tokenize,
) -> float:
    """Corpus ROUGE-L: the mean of the per-image scores (as pycocoevalcap reports it)."""
    scores = rouge_l_scores(generated, references, tokenizer=tokenizer)
    return sum(scores) / len(scores)


def _cider_vector(
    counts: Counter[NGram], df: dict[NGram, int], log_images: float, max_n: int
) -> tuple[list[dict[NGram, float]], list[float], int]:
    """tf-idf vectors per n, their norms, and pycocoevalcap's "length".

    The length is the number of bigrams (len - 1 for a non-empty caption), not the number of
    words: pycocoevalcap counts it that way. It only enters through differences, which agree
    with word-count differences unless a caption is empty.
    """
    vectors: list[dict[NGram, float]] = [{} for _ in range(max_n)]
    norms = [0.0] * max_n
    length = 0
    for gram, tf in counts.items():
        n = len(gram) - 1
        weight = tf * (log_images - math.log(max(1.0, df.get(gram, 0))))
        vectors[n][gram] = weight
        norms[n] += weight * weight
        if n == 1:
            length += tf
    return vectors, [math.sqrt(norm) for norm in norms], length


def _cider_tokens(
    hyps: Sequence[Sequence[str]],
    refs: Sequence[Sequence[Sequence[str]]],
    max_n: int = CIDER_MAX_N,
    sigma: float = CIDER_SIGMA,
) -> list[float]:
    """Per-image CIDEr-D (pycocoevalcap's `Cider`) on tokenised input."""
    ref_counts = [[_ngrams(ref, max_n) for ref in image_refs] for image_refs in refs]
    df: dict[NGram, int] = {}
    for image_counts in ref_counts:
        for gram in set().union(*image_counts):
            df[gram] = df.get(gram, 0) + 1
    log_images = math.log(float(len(refs)))

    scores: list[float] = []
    for hyp, image_counts in zip(hyps, ref_counts, strict=True):
        vec_h, norm_h, len_h = _cider_vector(_ngrams(hyp, max_n), df, log_images, max_n)
        total = [0.0] * max_n
        for counts in image_counts:
            vec_r, norm_r, len_r = _cider_vector(counts, df, log_images, max_n)
            penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                value = 0.0
                for gram, weight in vec_h[n].items():
                    ref_weight = vec_r[n].get(gram, 0.0)
                    value += min(weight, ref_weight) * ref_weight
                if norm_h[n] != 0.0 and norm_r[n] != 0.0:
                    value /= norm_h[n] * norm_r[n]
                total[n] += value * penalty
        scores.append(sum(total) / max_n / len(image_counts) * 10.0)
    return scores


def cider_scores(
    generated: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenizer: Tokenizer = tokenize,
) -> list[float]:
    """CIDEr-D per image; idf still comes from the whole corpus's references."""
    hyps, refs = _tokenized(generated, references, tokenizer)
    return _cider_tokens(hyps, refs)


def cider(
    generated: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenizer: Tokenizer = tokenize,
) -> float:
    """Corpus CIDEr-D: the mean of the per-image scores (0 for a one-image corpus)."""
    scores = cider_scores(generated, references, tokenizer=tokenizer)
    return sum(scores) / len(scores)


def caption_metrics(
    generated: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenizer: Tokenizer = tokenize,
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr of a corpus, tokenising each caption once."""
    hyps, refs = _tokenized(generated, references, tokenizer)
    metrics = {f"bleu{n}": score for n, score in enumerate(_bleu_tokens(hyps, refs, BLEU_MAX_N), 1)}
    rouge = [_rouge_l_tokens(hyp, image_refs) for hyp, image_refs in zip(hyps, refs, strict=True)]
    metrics["rouge_l"] = sum(rouge) / len(rouge)
    cider_per_image = _cider_tokens(hyps, refs)
    metrics["cider"] = sum(cider_per_image) / len(cider_per_image)
    return metrics


def caption_change_rate(
    clean: Sequence[str], adversarial: Sequence[str], *, tokenizer: Tokenizer = tokenize
) -> float:
    """Fraction of images whose caption changed under attack, ignoring case and punctuation."""
    if isinstance(clean, str) or isinstance(adversarial, str):
        raise CaptionInputError("clean and adversarial must be lists of captions, not strings")
    clean_list = list(clean)
    adv_list = list(adversarial)
    if len(clean_list) != len(adv_list):
        raise CaptionInputError(
            f"{len(clean_list)} clean captions but {len(adv_list)} adversarial captions; "
            "pass one of each per image"
        )
    if not clean_list:
        raise CaptionInputError("no captions to compare; pass at least one image's captions")
    changed = sum(
        tokenizer(before) != tokenizer(after)
        for before, after in zip(clean_list, adv_list, strict=True)
    )
    return changed / len(clean_list)


def _encode_all(
    encode: Callable[[list[str]], torch.Tensor], texts: list[str], batch_size: int
) -> torch.Tensor:
    """Embeds texts in batches and checks the encoder returned one row per text."""
    import torch

    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        emb = encode(batch)
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != len(batch):
            shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise CaptionInputError(
                f"encode returned {shape} for {len(batch)} texts; it must return a "
                "[num_texts, dim] tensor"
            )
        chunks.append(emb.detach().float())
    device = chunks[0].device
    return torch.cat([chunk.to(device) for chunk in chunks])


def embedding_similarity(
    generated: Sequence[str],
    references: Sequence[Sequence[str]],
    encode: Callable[[list[str]], torch.Tensor],
    *,
    batch_size: int = 256,
) -> dict[str, float]:
    """Cosine between each generated caption and its references in a text encoder's space.

    Catches meaning changes that n-gram metrics miss (synonyms, reordering). `encode` is any
    text encoder, e.g. a victim's `encode_text`; embeddings are re-normalised here so an
    encoder that forgets still yields cosines. Returns the mean over images of the best
    (`emb_sim_max`) and of the average (`emb_sim_mean`) cosine over each image's references.
    """
    import torch
    import torch.nn.functional as F

    if batch_size < 1:
        raise CaptionInputError(f"batch_size must be at least 1, got {batch_size}")
    gen, refs = _check_inputs(generated, references)
    flat_refs = [ref for image_refs in refs for ref in image_refs]
    with torch.no_grad():
        gen_emb = F.normalize(_encode_all(encode, gen, batch_size), dim=-1)
        ref_emb = F.normalize(_encode_all(encode, flat_refs, batch_size), dim=-1)
        if gen_emb.shape[1] != ref_emb.shape[1]:
            raise CaptionInputError("encode returned embeddings of different widths")
        ref_emb = ref_emb.to(gen_emb.device)
        counts = torch.tensor([len(image_refs) for image_refs in refs], device=gen_emb.device)
        owner = torch.repeat_interleave(torch.arange(len(refs), device=gen_emb.device), counts)
        cosines = (gen_emb[owner] * ref_emb).sum(dim=-1)
        best = torch.full((len(refs),), -math.inf, device=gen_emb.device)
        best = best.scatter_reduce(0, owner, cosines, reduce="amax")
        mean = torch.zeros(len(refs), device=gen_emb.device).index_add(0, owner, cosines)
        mean = mean / counts.to(mean.dtype)
    return {"emb_sim_max": float(best.mean()), "emb_sim_mean": float(mean.mean())}
