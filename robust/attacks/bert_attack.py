"""BERT-Attack: replace a caption's most important words with masked-LM suggestions.

One implementation serves two roles:

- objective ``"guide"``: SGA's image-guided text attack (``img_guided_attack``). Among the
  candidates, keep the caption whose victim embedding is least similar (cosine) to the
  caption's guide embedding (its clean or adversarial image).
- objective ``"kl"``: the untargeted BERT-Attack baseline of Co-Attack/SGA. Keep the
  caption that maximises KL(softmax(original embedding) || softmax(candidate embedding)).
  The reference computes this on the BERT hidden states of the victim's text encoder
  (``text_embed``, flattened); here it is computed on the victim's ``encode_text``
  embeddings, so the attack works for every victim family through the same contract.

The algorithm follows the reference code (facts in ``shared/research/sga.md`` section 1):
one masked-LM forward on the *unmasked* caption gives the top-k substitutes at every
position; words are ranked by how much replacing them with ``[UNK]`` moves the victim's
embedding (KL of the softmaxed embeddings); a greedy pass over the words in that order
skips stop-words and punctuation, evaluates the current caption together with all its
one-word substitutions, and keeps the best one if it beats the current caption. The budget
counts only substitutions actually made.

Deliberate differences from the reference:

- The candidates of word j are read at the word's *own* sub-word positions (offset +1 for
  ``[CLS]``). SGA/Co-Attack (and DRA/SA-AET, which copy SGA's text attack) start the word
  offsets at 0 while the logits include ``[CLS]``, so they read the previous token's
  position (``[CLS]``'s for the first word); original BERT-Attack does it right.
  ``subword_offset="official"`` reproduces the reference's reading, for comparisons with
  published tables.
- The reference always tries sub-word combinations for words of several sub-words; here
  they are off unless ``use_combinations`` (such words then have no substitutes).
- The masked-LM input is ``[CLS] sub-words [SEP]`` (ALBEF's tokenizer drops ``[SEP]``).
- Special tokens (``[SEP]``, ``[unused0]``, ...) and multi-word suggestions (a combination
  that decodes to text with a space) are never substitutes, so one word stays one word.
- A word whose sub-words do not all fit in ``max_length - 2`` tokens is skipped.
- ``threshold_pred_score=None`` switches the logit threshold off (the reference uses 0).
- Everything is batched across captions and runs under ``torch.no_grad()``.

Speed: everything that does not depend on the guide (sub-words, masked-LM candidates,
word importance) is computed once per caption set and reused while the same captions come
back (SGA attacks the same captions twice, guided first by the clean and then by the
adversarial image), and each distinct text is embedded once per caption set.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robust.attacks.base import AttackConfigError, TextAttack
from robust.attacks.registry import register_attack
from robust.attacks.stopwords import is_filter_word
from robust.errors import RobustError, WeightsNotFoundError
from robust.resources import ZOO_DIR
from robust.victims.base import Victim
from robust.victims.weights import find_hf_model_dir, missing_weights

Objective = Literal["guide", "kl"]
OBJECTIVES: tuple[str, ...] = ("guide", "kl")
SubwordOffset = Literal["own", "official"]
SUBWORD_OFFSETS: tuple[str, ...] = ("own", "official")
# `max_length: "source"`: the official SGA/DRA/SA-AET scripts' text length for the source
# victim's family (30 for ALBEF and TCL, 77 for every other source, i.e. CLIP).
SOURCE_MAX_LENGTH = "source"
SOURCE_FAMILY_MAX_LENGTH: dict[str, int] = {"albef": 30, "tcl": 30}
OTHER_FAMILY_MAX_LENGTH = 77
DEFAULT_MLM = "bert-base-uncased"
IMPORTANCE_MASK = "[UNK]"
# Multi-subword words: top-4 per sub-word, at most 12 sub-words, first 24 combinations.
COMBINATION_TOP_K = 4
COMBINATION_MAX_SUBWORDS = 12
COMBINATION_LIMIT = 24

MaskedLM = str | os.PathLike | tuple[nn.Module, Any]


@dataclass(frozen=True)
class BertAttackParams:
    """BERT-Attack hyper-parameters.

    `max_words`, `top_k`, `threshold_pred_score` and `max_length` (for ALBEF/TCL sources)
    are SGA's values. Two defaults differ from the official SGA/DRA/SA-AET code on purpose:
    `use_combinations` is off (the official code always tries sub-word combinations) and
    `subword_offset` is "own" (each word's candidates read at its own sub-word positions;
    "official" reads the previous token's, as that code does). `max_length` "source" takes
    the official scripts' length for the source's family: 30 for ALBEF/TCL, 77 otherwise.
    """

    max_words: int = 1
    top_k: int = 10
    threshold_pred_score: float | None = 0.3
    use_combinations: bool = False
    max_length: int | str = 30
    objective: Objective = "guide"
    importance_batch_size: int = 128
    candidate_batch_size: int = 128
    subword_offset: SubwordOffset = "own"

    def __post_init__(self) -> None:
        for name in ("max_words", "top_k", "importance_batch_size", "candidate_batch_size"):
            _check_positive_int(name, getattr(self, name))
        if self.max_length != SOURCE_MAX_LENGTH:
            if isinstance(self.max_length, str):
                raise AttackConfigError(
                    f"max_length must be a positive integer or {SOURCE_MAX_LENGTH!r} (the "
                    f"official length for the source's family), got {self.max_length!r}"
                )
            _check_positive_int("max_length", self.max_length)
            if self.max_length < 3:
                raise AttackConfigError(
                    f"max_length must be >= 3 ([CLS], one sub-word, [SEP]), got {self.max_length}"
                )
        if self.subword_offset not in SUBWORD_OFFSETS:
            raise AttackConfigError(
                f"subword_offset must be one of {', '.join(SUBWORD_OFFSETS)}, got "
                f"{self.subword_offset!r}"
            )
        threshold = self.threshold_pred_score
        if threshold is not None and (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
        ):
            raise AttackConfigError(
                f"threshold_pred_score must be a finite number or None (off), got {threshold!r}"
            )
        if not isinstance(self.use_combinations, bool):
            raise AttackConfigError(
                f"use_combinations must be true or false, got {self.use_combinations!r}"
            )
        if self.objective not in OBJECTIVES:
            raise AttackConfigError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )


def resolved_max_length(max_length: int | str, victim: Victim) -> int:
    """The number of masked-LM tokens a caption may use: `max_length`, or for "source" the
    official scripts' length for `victim`'s family."""
    if max_length == SOURCE_MAX_LENGTH:
        family = str(getattr(victim, "family", ""))
        return SOURCE_FAMILY_MAX_LENGTH.get(family, OTHER_FAMILY_MAX_LENGTH)
    return int(max_length)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttackConfigError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class WordCandidates:
    """The substitutes of one attackable word and the masked-LM positions they come from.

    `positions` index the masked-LM input, where 0 is `[CLS]` (the word's own sub-words, or
    with `subword_offset` "official" the tokens before them); `substitutes` are already
    filtered (not the word, no `##`, no stop-word, no special token), in the MLM's order.
    """

    index: int
    word: str
    positions: tuple[int, ...]
    substitutes: tuple[str, ...]


@dataclass
class _Tokenized:
    """A caption split on spaces, with each word's sub-word span (no [CLS] offset)."""

    words: list[str]
    spans: list[tuple[int, int]]
    subword_ids: list[int]


@dataclass
class _Prepared:
    """The guide-independent work on one caption set, kept while the same captions return."""

    texts: tuple[str, ...]
    tokenized: list[_Tokenized]
    original: torch.Tensor
    orders: list[list[WordCandidates]]
    embeddings: dict[str, torch.Tensor]


@dataclass
class _GreedyState:
    """One caption's progress through the greedy substitution loop."""

    words: list[str]
    order: list[WordCandidates]
    changes: int = 0
    next_word: int = 0
    done: bool = False


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers 5 draws loading bars on stderr; library code stays quiet."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def resolve_mlm_folder(mlm: str | os.PathLike) -> Path:
    """The local `save_pretrained` folder of a masked LM; never downloads.

    A bare name is looked up in the toy zoo (`robust/zoo/<name>`; `toy-*` names only
    there), then `$ROBUST_WEIGHTS` and the Hugging Face cache; a path must be a folder
    holding `config.json`.
    """
    text = os.fspath(mlm)
    looked: list[str] = []
    is_path = (
        not isinstance(mlm, str)
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or Path(text).expanduser().exists()
    )
    if is_path:
        folder = Path(text).expanduser()
        looked.append(str(folder))
        if (folder / "config.json").is_file():
            return folder
        raise missing_weights(f"masked LM {text!r}", looked, "the folder you gave")
    if "/" not in text:
        zoo_folder = ZOO_DIR / text
        looked.append(str(zoo_folder))
        if (zoo_folder / "config.json").is_file():
            return zoo_folder
        if text.startswith("toy-"):
            raise WeightsNotFoundError(
                f"masked LM {text!r} is not in the toy zoo (expected {zoo_folder}/config.json); "
                f"train it with `robust zoo train {text}`"
            )
    try:
        found, hub_looked, source = find_hf_model_dir(text)
    except ValueError:  # not a valid hub id (huggingface_hub's HFValidationError)
        found, hub_looked, source = None, [], "nowhere: not a folder and not a hub id"
    looked.extend(hub_looked)
    if found is None:
        raise missing_weights(f"masked LM {text!r}", looked, source)
    return found


def load_masked_lm(folder: str | os.PathLike) -> tuple[nn.Module, Any]:
    """(BertForMaskedLM in eval mode, its tokenizer) from a local folder; missing keys fail."""
    from transformers import AutoTokenizer, BertForMaskedLM, BertTokenizer

    folder = Path(folder)
    try:
        with _quiet_transformers():
            model, info = BertForMaskedLM.from_pretrained(
                folder, local_files_only=True, output_loading_info=True
            )
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError):
                # A folder with only vocab.txt + config.json. Never BertTokenizer(vocab_file=):
                # transformers 5 silently ignores the vocabulary that way.
                tokenizer = BertTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RobustError(f"cannot load a BertForMaskedLM from {folder}: {first_line}") from None
    missing = [key for key in info.get("missing_keys", ()) if not key.endswith("position_ids")]
    if missing:
        raise RobustError(
            f"{folder} lacks {len(missing)} weights of BertForMaskedLM "
            f"(e.g. {', '.join(sorted(missing)[:3])}); is it a masked-LM checkpoint?"
        )
    return model.float().eval(), tokenizer


def _module_device(module: nn.Module, fallback: torch.device) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return fallback


def _logits(output: Any) -> torch.Tensor:
    """The logits of a transformers output object or a plain (logits, ...) tuple/tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output[0]


def _kl_from(reference: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """KL(softmax(reference) || softmax(row)) for every row, over the embedding dims."""
    reference_log = F.log_softmax(reference.float(), dim=-1)
    log_q = F.log_softmax(embeddings.float(), dim=-1)
    return (reference_log.exp() * (reference_log - log_q)).sum(dim=-1)


def _is_special(token: str) -> bool:
    return len(token) > 1 and token.startswith("[") and token.endswith("]")


@register_attack
class BertAttack(TextAttack):
    """BERT-Attack bound to a source victim and an injectable masked LM.

    `mlm` is a folder or name that `BertForMaskedLM.from_pretrained` can load locally (the
    toy zoo's `toy-mlm`, or `bert-base-uncased` from `$ROBUST_WEIGHTS` / the HF cache), or
    an already-built `(model, tokenizer)` pair. A folder-loaded MLM is moved to the
    victim's device; an injected one stays where it is.
    """

    name: ClassVar[str] = "bert_attack"
    Params: ClassVar[type] = BertAttackParams
    needs_mlm: ClassVar[bool] = True

    def __init__(
        self,
        victim: Victim,
        *,
        mlm: MaskedLM = DEFAULT_MLM,
        seed: int = 0,
        **params: Any,
    ) -> None:
        super().__init__(victim, seed=seed, **params)
        self._params: BertAttackParams
        if isinstance(mlm, tuple):
            if len(mlm) != 2:
                raise AttackConfigError("mlm must be a folder, a name or a (model, tokenizer) pair")
            self.mlm, self.tokenizer = mlm
            self.mlm_name = type(self.mlm).__name__
        else:
            folder = resolve_mlm_folder(mlm)
            self.mlm, self.tokenizer = load_masked_lm(folder)
            self.mlm.to(victim.device)
            self.mlm_name = str(folder)
        self.mlm.eval()
        self._lower_case = bool(getattr(self.tokenizer, "do_lower_case", False))
        self._cls_id = int(self.tokenizer.cls_token_id)
        self._sep_id = int(self.tokenizer.sep_token_id)
        pad_id = self.tokenizer.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else 0
        self.max_length = resolved_max_length(self._params.max_length, victim)
        # [CLS] is MLM position 0: a word's own sub-words start one later; the official
        # code's reading (no shift) takes the previous token's predictions.
        self._position_shift = 1 if self._params.subword_offset == "own" else 0
        self._subword_cache: dict[str, list[int]] = {}
        self._prepared: _Prepared | None = None

    @classmethod
    def check_files(cls, params: Mapping[str, Any], mlm: str | None) -> None:
        """The masked LM it loads (the default one unless `mlm` is given)."""
        resolve_mlm_folder(mlm or DEFAULT_MLM)

    def config(self) -> dict[str, Any]:
        """Every hyper-parameter plus which masked LM proposed the substitutes."""
        return {**super().config(), "mlm": self.mlm_name}

    # ------------------------------------------------------------------ the attack

    @torch.no_grad()
    def __call__(
        self,
        texts: Sequence[str],
        guide_embeddings: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """One adversarial caption per caption; deterministic, so `generator` is unused.

        `guide_embeddings` `[T, D]` (one row per caption) is required by objective "guide"
        and ignored by "kl".
        """
        texts = list(texts)
        if not texts:
            return []
        params = self._params
        guide = self._check_guide(guide_embeddings, len(texts))
        prepared = self._prepare(texts)
        original = prepared.original
        states = [
            _GreedyState(words=list(item.words), order=order)
            for item, order in zip(prepared.tokenized, prepared.orders, strict=True)
        ]
        while True:
            batch_texts: list[str] = []
            groups: list[tuple[int, WordCandidates, int, int]] = []
            for caption, state in enumerate(states):
                word = self._next_word(state)
                if word is None:
                    continue
                options = [" ".join(state.words)]
                for substitute in word.substitutes:
                    replaced = list(state.words)
                    replaced[word.index] = substitute
                    options.append(" ".join(replaced))
                groups.append((caption, word, len(batch_texts), len(options)))
                batch_texts.extend(options)
            if not groups:
                break
            embeddings = self._embed_memo(prepared, batch_texts, params.candidate_batch_size)
            for caption, word, start, count in groups:
                rows = embeddings[start : start + count]
                if params.objective == "guide":
                    scores = -(rows @ guide[caption])
                else:
                    scores = _kl_from(original[caption], rows)
                best = int(torch.argmax(scores))  # first maximum: ties keep the current text
                if best > 0 and scores[best] > scores[0]:
                    state = states[caption]
                    state.words[word.index] = word.substitutes[best - 1]
                    state.changes += 1
                    if state.changes >= params.max_words:
                        state.done = True
        return [" ".join(state.words) for state in states]

    def candidates_for(self, text: str) -> list[WordCandidates]:
        """The attackable words of one caption and their substitutes, in word order."""
        with torch.no_grad():
            return self._candidates([self._tokenize(text)])[0]

    # ------------------------------------------------------------------ pieces

    def _check_guide(self, guide: torch.Tensor | None, count: int) -> torch.Tensor | None:
        if self._params.objective != "guide":
            return None
        if guide is None:
            raise AttackConfigError(
                "bert_attack with objective 'guide' needs guide_embeddings [T, D], one row per "
                "caption; pass them or use objective 'kl'"
            )
        if guide.ndim != 2 or guide.shape[0] != count:
            raise AttackConfigError(
                f"guide_embeddings must be [T, D] with T = {count} captions, got "
                f"{tuple(guide.shape)}"
            )
        return F.normalize(guide.detach().to(self.victim.device, torch.float32), dim=-1)

    def _prepare(self, texts: list[str]) -> _Prepared:
        """Tokenize, propose candidates and rank words, or reuse them for the same captions."""
        key = tuple(texts)
        if self._prepared is not None and self._prepared.texts == key:
            return self._prepared
        self._prepared = None  # drop the previous set's memo before building the next one
        tokenized = [self._tokenize(text) for text in texts]
        candidates = self._candidates(tokenized)
        prepared = _Prepared(key, tokenized, torch.empty(0), [], {})
        prepared.original = self._embed_memo(prepared, texts, self._params.importance_batch_size)
        prepared.orders = self._importance_orders(prepared, candidates)
        self._prepared = prepared
        return prepared

    def _embed_memo(
        self, prepared: _Prepared, texts: Sequence[str], batch_size: int
    ) -> torch.Tensor:
        """Embeddings `[N, D]` of `texts`, encoding each distinct text once per caption set."""
        memo = prepared.embeddings
        missing = list(dict.fromkeys(text for text in texts if text not in memo))
        if missing:
            memo.update(zip(missing, self._embed(missing, batch_size), strict=True))
        return torch.stack([memo[text] for text in texts])

    def _embed(self, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        """Victim text embeddings `[N, D]` (float32), computed in chunks."""
        chunks = [
            self.victim.encode_text(list(texts[start : start + batch_size])).float()
            for start in range(0, len(texts), batch_size)
        ]
        return torch.cat(chunks, dim=0)

    def _subwords(self, word: str) -> list[int]:
        cached = self._subword_cache.get(word)
        if cached is None:
            tokens = self.tokenizer.tokenize(word) if word else []
            cached = [int(i) for i in self.tokenizer.convert_tokens_to_ids(tokens)]
            if len(self._subword_cache) < 100_000:
                self._subword_cache[word] = cached
        return cached

    def _tokenize(self, text: str) -> _Tokenized:
        """Split on single spaces (as the reference) and keep each word's sub-word span."""
        words = text.split(" ")
        spans: list[tuple[int, int]] = []
        subword_ids: list[int] = []
        for word in words:
            pieces = self._subwords(word)
            spans.append((len(subword_ids), len(subword_ids) + len(pieces)))
            subword_ids.extend(pieces)
        return _Tokenized(words, spans, subword_ids[: self.max_length - 2])

    def _attackable(self, item: _Tokenized, index: int) -> bool:
        start, end = item.spans[index]
        limit = self.max_length - 2
        return end > start and end <= limit and not is_filter_word(item.words[index])

    def _mlm_top_k(self, tokenized: list[_Tokenized]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k logits and ids `[T, L, k]` (CPU) from the unmasked `[CLS] x [SEP]` captions."""
        device = _module_device(self.mlm, self.victim.device)
        batch_size = self._params.candidate_batch_size
        length = max(len(item.subword_ids) for item in tokenized) + 2
        k = min(self._params.top_k, len(self.tokenizer))
        all_scores, all_ids = [], []
        for start in range(0, len(tokenized), batch_size):
            chunk = tokenized[start : start + batch_size]
            input_ids = torch.full((len(chunk), length), self._pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, item in enumerate(chunk):
                ids = [self._cls_id, *item.subword_ids, self._sep_id]
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
            logits = _logits(
                self.mlm(input_ids=input_ids.to(device), attention_mask=attention.to(device))
            )
            scores, ids = torch.topk(logits.float(), k, dim=-1)
            all_scores.append(scores.cpu())
            all_ids.append(ids.cpu())
        return torch.cat(all_scores), torch.cat(all_ids)

    def _candidates(self, tokenized: list[_Tokenized]) -> list[list[WordCandidates]]:
        """Substitutes of every attackable word, read at the word's own MLM positions (or,
        with `subword_offset` "official", one position earlier)."""
        if not tokenized or all(not item.subword_ids for item in tokenized):
            return [[] for _ in tokenized]
        top_scores, top_ids = self._mlm_top_k(tokenized)
        threshold = self._params.threshold_pred_score
        raw: list[list[tuple[int, str, tuple[int, ...], list[str]]]] = []
        combinations: list[tuple[int, int, list[tuple[int, ...]]]] = []
        for caption, item in enumerate(tokenized):
            words: list[tuple[int, str, tuple[int, ...], list[str]]] = []
            for index, word in enumerate(item.words):
                if not self._attackable(item, index):
                    continue
                start, end = item.spans[index]
                shift = self._position_shift
                positions = tuple(range(start + shift, end + shift))
                tokens: list[str] = []
                if len(positions) == 1:
                    scores = top_scores[caption, positions[0]].tolist()
                    ids = top_ids[caption, positions[0]].tolist()
                    kept = [i for i, s in zip(ids, scores, strict=True) if _passes(s, threshold)]
                    tokens = list(self.tokenizer.convert_ids_to_tokens(kept))
                elif self._params.use_combinations:
                    table = top_ids[caption, list(positions[:COMBINATION_MAX_SUBWORDS])]
                    table = table[:, :COMBINATION_TOP_K].tolist()
                    combos = list(itertools.islice(itertools.product(*table), COMBINATION_LIMIT))
                    combinations.append((caption, len(words), combos))
                words.append((index, word, positions, tokens))
            raw.append(words)
        for (caption, slot, _), ranked in zip(
            combinations, self._rank_combinations([c for _, _, c in combinations]), strict=True
        ):
            index, word, positions, _ = raw[caption][slot]
            raw[caption][slot] = (index, word, positions, ranked)
        return [
            [
                WordCandidates(index, word, positions, self._filter(word, tokens))
                for index, word, positions, tokens in words
            ]
            for words in raw
        ]

    def _rank_combinations(self, groups: list[list[tuple[int, ...]]]) -> list[list[str]]:
        """Each group's combinations as words, sorted by MLM perplexity (lowest first).

        As in the reference, a combination is scored by the MLM on the sub-words alone
        (no [CLS]/[SEP]); groups of equal length share batched forwards.
        """
        perplexities: list[torch.Tensor | None] = [None] * len(groups)
        by_length: dict[int, list[int]] = {}
        for group, combos in enumerate(groups):
            by_length.setdefault(len(combos[0]), []).append(group)
        device = _module_device(self.mlm, self.victim.device)
        batch_size = self._params.candidate_batch_size
        for members in by_length.values():
            rows = torch.tensor([combo for g in members for combo in groups[g]], dtype=torch.long)
            losses = []
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size].to(device)
                logits = _logits(self.mlm(input_ids=chunk)).float()
                loss = F.cross_entropy(logits.transpose(1, 2), chunk, reduction="none")
                losses.append(loss.mean(dim=1).exp().cpu())
            flat = torch.cat(losses)
            offset = 0
            for g in members:
                perplexities[g] = flat[offset : offset + len(groups[g])]
                offset += len(groups[g])
        ranked: list[list[str]] = []
        for combos, perplexity in zip(groups, perplexities, strict=True):
            assert perplexity is not None
            order = torch.sort(perplexity, stable=True).indices.tolist()
            ranked.append(
                [
                    self.tokenizer.convert_tokens_to_string(
                        self.tokenizer.convert_ids_to_tokens(list(combos[i]))
                    )
                    for i in order
                ]
            )
        return ranked

    def _filter(self, word: str, tokens: list[str]) -> tuple[str, ...]:
        """Drop the word itself, sub-word pieces, stop-words, special tokens and phrases."""
        original = word.lower() if self._lower_case else word
        kept: list[str] = []
        for token in tokens:
            text = token.strip()
            same = (text.lower() if self._lower_case else text) == original
            if (
                not text
                or same
                or "##" in text
                or is_filter_word(text)
                or _is_special(text)
                or any(ch.isspace() for ch in text)
                or text in kept
            ):
                continue
            kept.append(text)
        return tuple(kept)

    def _importance_orders(
        self, prepared: _Prepared, candidates: list[list[WordCandidates]]
    ) -> list[list[WordCandidates]]:
        """Each caption's words with substitutes, most important first.

        Importance = KL(softmax(original embedding) || softmax(embedding with the word
        replaced by [UNK])). Words without substitutes cannot change, so they are not scored.
        """
        tokenized, original = prepared.tokenized, prepared.original
        masked_texts: list[str] = []
        owners: list[tuple[int, int]] = []
        for caption, (item, words) in enumerate(zip(tokenized, candidates, strict=True)):
            for slot, word in enumerate(words):
                if not word.substitutes:
                    continue
                masked = list(item.words)
                masked[word.index] = IMPORTANCE_MASK
                masked_texts.append(" ".join(masked))
                owners.append((caption, slot))
        scored: list[list[tuple[float, WordCandidates]]] = [[] for _ in tokenized]
        if masked_texts:
            embeddings = self._embed_memo(
                prepared, masked_texts, self._params.importance_batch_size
            )
            captions = torch.tensor([caption for caption, _ in owners], device=original.device)
            scores = _kl_from(original[captions], embeddings).tolist()
            for (caption, slot), score in zip(owners, scores, strict=True):
                scored[caption].append((score, candidates[caption][slot]))
        # sorted() is stable: equal scores keep word order, as in the reference.
        return [[word for _, word in sorted(items, key=lambda x: -x[0])] for items in scored]

    def _next_word(self, state: _GreedyState) -> WordCandidates | None:
        if state.done or state.next_word >= len(state.order):
            state.done = True
            return None
        word = state.order[state.next_word]
        state.next_word += 1
        return word


def _passes(score: float, threshold: float | None) -> bool:
    return threshold is None or score >= threshold
