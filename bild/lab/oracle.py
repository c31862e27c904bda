"""The limit a drafting policy is measured against: an oracle that knows which drafts the large model will accept.

For greedy decoding, along the large model's own output y_1..y_T (what every lossless method
produces), one teacher-forced pass of the small model tells at every position t whether its
draft would be accepted, and so the accepted run r_t: how many drafts in a row, from t, the
large model would keep. A drafting schedule is a sequence of rounds (drafts, then one
verification); its modelled time is what the engine's passes for those rounds cost under the
cost model (`price` replays the engine's pass bookkeeping: who feeds how many tokens, prefills
included, so it equals `CostModel.seconds` of a real run with the same rounds). Then:

- `oracle`: the fastest schedule that never drafts a rejected token, under the cap: dynamic
  programming over positions, at t drafting j <= min(r_t, cap, T - t) tokens and verifying j + 1
  (j = 0 costs the small pass a fallback throws away: the engine always drafts before a policy
  decides). No drafting policy can beat it on the same pair, prompts and cost model.
- `fixed`: the schedule of a fixed draft length gamma (speculative decoding's classic setting),
  priced the same way; the best gamma is what a tuned fixed length reaches.
- `ideal`: what the small model's confidence allows: a schedule that knows, before drafting, each
  draft's calibrated acceptance probability (the bench's own acceptance by max probability),
  but not whether it will be accepted, and drafts the length with the best expected tokens per
  modelled time. Not a bound (a lucky policy can beat it on one set of prompts), a reference:
  the oracle over it is what the signal cannot tell; it over a method is what the method leaves.
- `closed_form`: Leviathan et al.'s analytic speedup with the measured acceptance and cost
  ratio (i.i.d. acceptance, verification costing one large pass), for comparison with the field.
- `gap`: where a lossless method loses against the oracle, in modelled seconds that add up to
  the gap exactly: `rejected` (the small passes and longer verifications of drafts the large
  model refused, and of drafts a fallback threw away), `early_stops` (verifying while the next
  draft would have been accepted: the method's kept drafts against drafting to the first
  rejection), `cap` (the method's own draft cap against the bench's, when they differ) and
  `schedule` (where the oracle splits long runs differently, because a longer verification costs
  more).

Greedy only: under sampling, acceptance is a draw (min(1, p_large/p_small)) and the oracle would
be an expectation over schedules, which this module does not claim.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from bild.costs import CostModel
from bild.pair import ModelPair
from bild.schedule import Position, Round, passes, play
from bild.sources import ContextLookup
from bild.stats import GenerationStats


class Forced(NamedTuple):
    """The small model teacher-forced along an output: at each position whether its greedy draft is the output's
    token, its max probability and its most likely token."""

    matches: list[bool]
    max_prob: list[float]
    argmax: list[int]


@torch.inference_mode()
def teacher_forced(pair: ModelPair, prompt_ids: list[int], tokens: list[int]) -> Forced:
    """At each position of `tokens` (the large model's output), the small model's draft given the true prefix.
    One pass."""
    if not tokens:
        return Forced([], [], [])
    model, device = pair.small, pair.device
    if pair.encoder_decoder:
        start = pair.large.config.decoder_start_token_id
        logits = model(input_ids=torch.tensor([prompt_ids], device=device),
                       decoder_input_ids=torch.tensor([[start, *tokens[:-1]]], device=device)).logits[0]  # [T, V]
    else:
        ids = torch.tensor([prompt_ids + tokens[:-1]], device=device)  # [1, P + T - 1]
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:]  # [T, V]
    probs = torch.softmax(logits[:, : pair.vocab_size].float(), dim=-1)  # [T, V]
    top, arg = probs.max(dim=-1)
    return Forced((arg == torch.tensor(tokens, device=device)).tolist(), top.tolist(), arg.tolist())


def teach(pair: ModelPair, prompts: Sequence[list[int]], tokens: Sequence[int], turns: Sequence[int]
          ) -> list[dict[str, Any]]:
    """The small model teacher-forced along an output, one pass per turn (`prompts[t]` then that turn's `turns[t]`
    tokens): per turn its matches, its max probabilities, the (decoder's) prompt length, how much of context
    lookup's proposal the large model keeps at each position, whether lookup's guess there is the small model's
    top-1 (`agrees`), and the bound on any lookup (`bigram`): what the oracle reads."""
    found, start = [], 0
    for ids, count in zip(prompts, turns, strict=True):
        output = list(tokens[start: start + count])
        forced = teacher_forced(pair, ids, output)
        decoder = [pair.large.config.decoder_start_token_id] if pair.encoder_decoder else list(ids)
        runs, guesses = lookup_along(decoder, output)
        found.append({"matches": forced.matches, "max_prob": forced.max_prob, "prompt_tokens": len(decoder),
                      "lookup": runs, "bigram": bigram_runs(decoder, output),
                      "agrees": [None if g is None else g == a for g, a in zip(guesses, forced.argmax, strict=True)]})
        start += count
    return found


def lookup_along(sequence: list[int], tokens: Sequence[int], max_ngram: int = 3
                 ) -> tuple[list[int], list[int | None]]:
    """At each position t of `tokens` (the large model's output after `sequence`, the decoder's prompt): how many
    tokens of context lookup's proposal there the large model keeps (its proposal from the true prefix), and the
    proposal's first token (None: no match)."""
    source, seq, runs, guesses = ContextLookup(max_ngram=max_ngram), list(sequence), [], []
    for t in range(len(tokens)):
        proposal = source.propose(seq, len(tokens) - t)
        run = 0
        for guess, true in zip(proposal.tokens if proposal else [], tokens[t:], strict=False):
            if guess != true:
                break
            run += 1
        runs.append(run)
        guesses.append(proposal.tokens[0] if proposal else None)
        seq.append(tokens[t])
    return runs, guesses


def bigram_runs(sequence: list[int], tokens: Sequence[int]) -> list[int]:
    """At each position t of `tokens`: how many tokens in a row from t any context lookup could propose. A copied
    token continues an earlier occurrence, so its bigram (the token before it, it) occurred earlier in the
    sequence; the runs of such tokens bound every lookup's kept run, whatever its n-gram rule."""
    seq, seen, proposable = list(sequence), set(itertools.pairwise(sequence)), []
    for token in tokens:
        proposable.append(bool(seq) and (seq[-1], token) in seen)
        if seq:
            seen.add((seq[-1], token))
        seq.append(token)
    return accepted_runs(proposable)


def repetition(tokens: Sequence[int], n: int = 4) -> float | None:
    """The share of tokens that continue an n-gram seen earlier in the same output (a looping output scores high,
    and flatters context lookup)."""
    seen, repeats = set(), 0
    for t in range(n, len(tokens)):
        gram = tuple(tokens[t - n: t])
        repeats += gram in seen
        seen.add(gram)
    return repeats / (len(tokens) - n) if len(tokens) > n else None


def ends_in_loop(tokens: Sequence[int], shortest: int = 16) -> bool:
    """Whether an output ends in an exact loop: for some period p, its last max(2p, `shortest`) tokens each
    repeat the token p before (a looping large model flatters drafts copied from context)."""
    for p in range(1, len(tokens) // 3 + 1):
        tail = max(2 * p, shortest)
        if tail + p <= len(tokens) and all(tokens[t] == tokens[t - p] for t in range(len(tokens) - tail, len(tokens))):
            return True
    return False


def accepted_runs(matches: Sequence[bool]) -> list[int]:
    """r_t: how many drafts in a row from position t the large model keeps."""
    runs, run = [0] * len(matches), 0
    for t in range(len(matches) - 1, -1, -1):
        run = run + 1 if matches[t] else 0
        runs[t] = run
    return runs


def price(rounds: Sequence[Round], prompt_tokens: int, costs: CostModel) -> float:
    """Modelled seconds of a schedule: `CostModel.seconds` of the passes the engine would make."""
    small, large = passes(rounds, prompt_tokens)
    return costs.seconds(GenerationStats(small=small, large=large))


def round_seconds(r: Round, at: Position, costs: CostModel) -> tuple[float, Position]:
    """Modelled seconds of one round from `at` (its passes, as `passes` counts them), and where it leaves."""
    feeds, after = play(r, at)
    seconds = 0.0
    for feed in feeds:
        model = costs.small if feed.model == "small" else costs.large
        seconds += model.prefill_seconds(feed.tokens) if feed.first else model.pass_seconds(feed.tokens)
    return seconds + costs.overhead_per_pass * len(feeds), after


def oracle(runs: Sequence[int], cap: int, prompt_tokens: int, costs: CostModel,
           lookup: Sequence[int] | None = None, small: bool = True) -> tuple[float, list[Round]]:
    """The fastest schedule that drafts only accepted tokens, under `cap`: its modelled seconds and rounds.

    Its sources: the small model (`runs[t]`: how many of its drafts from position t the large model keeps) unless
    `small` is False, and context lookup when `lookup` is given (`lookup[t]`: how many tokens of the proposal at t
    it keeps). A round drafts a of the small model's, then b looked up at position t + a, as the engine does
    (bild/schedule.py prices it, so the oracle's time is what a replay of its rounds costs)."""
    total = len(runs)
    memo: dict[tuple[int, int], tuple[float, Round | None]] = {}

    def best(at: Position) -> float:
        t = at.length - prompt_tokens
        if t >= total:
            return 0.0
        key = (t, at.small_seen)
        if key not in memo:
            found: tuple[float, Round | None] = (float("inf"), None)
            for a in range(min(runs[t], cap, total - t) + 1 if small else 1):
                room = min(cap - a, total - t - a)
                for b in range(min(lookup[t + a], room) + 1 if lookup is not None and room > 0 else 1):
                    r = Round(a + b, a + b, discarded=small and a + b == 0, looked_up=b)
                    seconds, after = round_seconds(r, at, costs)
                    if seconds < found[0]:  # a cheap round first: pruning the rest by its cost alone
                        found = min(found, (seconds + best(after), r), key=lambda x: x[0])
            memo[key] = found
        return memo[key][0]

    start = Position(prompt_tokens)
    seconds = best(start) if total else 0.0
    rounds, at = [], start
    while at.length - prompt_tokens < total:
        r = memo[at.length - prompt_tokens, at.small_seen][1]
        rounds.append(r)
        at = play(r, at)[1]
    return seconds, rounds


def greedy_rounds(runs: Sequence[int], cap: int) -> list[Round]:
    """Draft to the first rejection (or the cap, or the end): the schedule with no early stop."""
    rounds, t = [], 0
    while t < len(runs):
        j = min(runs[t], cap, len(runs) - t)
        rounds.append(Round(j, j, discarded=j == 0))
        t += j + 1
    return rounds


def fixed_rounds(runs: Sequence[int], gamma: int) -> list[Round]:
    """Always draft `gamma` tokens (fewer at the end), keep them up to the first rejection: speculative
    decoding's fixed draft length (priced as if no rejected draft were an EOS)."""
    rounds, t = [], 0
    while t < len(runs):
        drafted = min(gamma, len(runs) - t)
        kept = min(runs[t], drafted)
        rounds.append(Round(drafted, kept))
        t += kept + 1
    return rounds


def ideal_rounds(runs: Sequence[int], survives: Sequence[float], cap: int, prompt_tokens: int, costs: CostModel,
                 rate: float) -> list[Round]:
    """At each round, the draft length with the best expected tokens less `rate` times its modelled seconds,
    knowing each draft's probability `survives` of acceptance; the rounds it then makes on the real outcomes."""
    rounds, at = [], Position(prompt_tokens)
    while (t := at.length - prompt_tokens) < len(runs):
        best, length, tokens, alive = -float("inf"), 0, 1.0, 1.0
        for j in range(min(cap, len(runs) - t) + 1):
            if j:
                alive *= survives[t + j - 1]
                tokens += alive
            value = tokens - rate * round_seconds(Round(j, j, discarded=j == 0), at, costs)[0]
            if value > best:
                best, length = value, j
        rounds.append(Round(length, min(runs[t], length), discarded=length == 0))
        at = play(rounds[-1], at)[1]
    return rounds


def ideal(turns: Sequence[tuple[list[int], list[Hashable], int]], cap: int, costs: CostModel) -> float:
    """Modelled seconds of an ideal over `turns` (accepted runs, each position's signal, prompt tokens): acceptance
    by signal calibrated on these turns, the rate found by fixed-point iteration."""
    counts: dict[Hashable, list[int]] = {}
    for runs, keys, _ in turns:
        for run, key in zip(runs, keys, strict=True):
            n = counts.setdefault(key, [0, 0])
            n[0] += 1
            n[1] += run > 0
    survives = [[counts[k][1] / counts[k][0] for k in keys] for _, keys, _ in turns]
    rate, seconds = 0.0, 0.0
    for _ in range(IDEAL_ITERATIONS):  # Dinkelbach: the schedule best at rate R, then R of that schedule
        schedules = [ideal_rounds(runs, q, cap, prompt, costs, rate)
                     for (runs, _, prompt), q in zip(turns, survives, strict=True)]
        seconds = sum(price(rounds, prompt, costs) for rounds, (_, _, prompt) in zip(schedules, turns, strict=True))
        tokens = sum(len(runs) for runs, _, _ in turns)
        if seconds and abs(tokens / seconds - rate) <= 1e-9 * rate:
            break
        rate = tokens / seconds if seconds else 0.0
    return seconds


def closed_form(alpha: float, ratio: float, cap: int) -> dict[str, Any]:
    """Leviathan et al. (2023): with i.i.d. acceptance `alpha` and a draft costing `ratio` of a verification,
    the speedup of draft length gamma is (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1)); drafting exactly
    to the first rejection is bounded by 1 / (1 - alpha + c alpha)."""
    if alpha >= 1:
        return {"alpha": alpha, "ratio": ratio, "best_gamma": cap, "speedup": (cap + 1) / (cap * ratio + 1),
                "bound": 1 / ratio if ratio else None}
    speed = {g: (1 - alpha ** (g + 1)) / ((1 - alpha) * (g * ratio + 1)) for g in range(1, cap + 1)}
    gamma = max(speed, key=speed.get)
    return {"alpha": alpha, "ratio": ratio, "best_gamma": gamma, "speedup": speed[gamma],
            "bound": 1 / (1 - alpha + ratio * alpha)}


def gap(method: Sequence[Round], runs: Sequence[int], method_cap: int, cap: int, prompt_tokens: int,
        costs: CostModel, best: float) -> dict[str, float]:
    """A lossless method's modelled seconds over the oracle's (`best`: `oracle`'s seconds for these runs, cap and
    prompt), split into causes that add up to it exactly."""
    steps = [price(method, prompt_tokens, costs),
             price([trimmed(r, small=True) for r in method], prompt_tokens, costs),
             price(greedy_rounds(runs, method_cap), prompt_tokens, costs),
             price(greedy_rounds(runs, cap), prompt_tokens, costs),
             best]
    return {"gap": steps[0] - steps[-1], "rejected": steps[0] - steps[1], "early_stops": steps[1] - steps[2],
            "cap": steps[2] - steps[3], "schedule": steps[3] - steps[4]}


def trimmed(r: Round, small: bool) -> Round:
    """A round keeping only the drafts that survived: a round the oracle can make (one of none pays the small pass
    the engine makes before any decision, when the small model is a source)."""
    return Round(r.kept, r.kept, discarded=small and r.kept == 0,
                 looked_up=max(0, r.kept - (r.drafted - r.looked_up)))


def source_gap(method: Sequence[Round], matches: Sequence[bool], lookup: Sequence[int], sources: Sequence[str],
               prompt_tokens: int, costs: CostModel, best: float) -> dict[str, float]:
    """A lossless method with draft sources over the oracle of its sources (`best`), in causes that add up to it
    exactly: `overruled` (rounds whose first rejected draft was a token another of its sources had right: lookup's
    for a small draft, the small model's for a looked-up one), `rejected` (the other refused drafts), `unused`
    (small passes for drafts context lookup had right at no pass: the same kept tokens, looked up from the first
    position where lookup covers the rest of the round), `schedule` (the rest: stopping early, the cap, where the
    oracle splits runs)."""
    small, both = "small" in sources, {"small", "lookup"} <= set(sources)
    overruled, t = [], 0
    for r in method:
        at, own = t + r.kept, r.drafted - r.looked_up  # the first rejected draft's position; the small drafts
        other_right = at < len(lookup) and (lookup[at] > 0 if r.kept < own else matches[at])
        overruled.append(both and r.kept < r.drafted and other_right)
        t += r.kept + 1
    kept = [trimmed(r, small) for r in method]
    resourced, t = [], 0
    for r in kept:
        a = r.drafted - r.looked_up
        first = next((j for j in range(a) if t + j < len(lookup) and lookup[t + j] >= r.kept - j), a) if both else a
        resourced.append(r._replace(looked_up=r.kept - first) if r.kept else r)
        t += r.kept + 1
    steps = [price(method, prompt_tokens, costs),
             price([trimmed(r, small) if o else r for r, o in zip(method, overruled, strict=True)], prompt_tokens,
                   costs),
             price(kept, prompt_tokens, costs),
             price(resourced, prompt_tokens, costs),
             best]
    return {"gap": steps[0] - steps[-1], "overruled": steps[0] - steps[1], "rejected": steps[1] - steps[2],
            "unused": steps[2] - steps[3], "schedule": steps[3] - steps[4]}


# --- a bench's limit ---------------------------------------------------------------------------------------

CALIBRATION_BINS = 10
IDEAL_ITERATIONS = 8  # the ideal's rate settles in 3-4 on the pairs we tried


def calibration_bin(max_prob: float) -> int:
    return min(int(max_prob * CALIBRATION_BINS), CALIBRATION_BINS - 1)


def calibration(matches: Sequence[bool], max_probs: Sequence[float]) -> list[dict[str, float]]:
    """How often a draft is accepted, by the small model's max probability (a reliability table)."""
    bins: list[list[int]] = [[0, 0] for _ in range(CALIBRATION_BINS)]
    for ok, p in zip(matches, max_probs, strict=True):
        b = bins[calibration_bin(p)]
        b[0] += 1
        b[1] += ok
    return [{"max_prob": (i + 0.5) / CALIBRATION_BINS, "drafts": n, "acceptance": a / n}
            for i, (n, a) in enumerate(bins) if n]


# "bigram": the bound of any context lookup (`bigram_runs`), whatever its n-gram rule
SOURCE_SETS = {"small": ("small",), "small+lookup": ("small", "lookup"), "lookup": ("lookup",),
               "small+bigram": ("small", "bigram"), "bigram": ("bigram",)}

# The ideal's ladder: what each signal, known before drafting, lets a schedule of the small model's drafts reach
# (None: turns recorded before the signal was)
SIGNALS: dict[str, Callable[[dict[str, Any]], list[Hashable] | None]] = {
    "confidence": lambda teacher: [calibration_bin(p) for p in teacher["max_prob"]],
    "confidence+agreement": lambda teacher: [(calibration_bin(p), a) for p, a in
                                             zip(teacher["max_prob"], teacher["agrees"], strict=True)]
    if "agrees" in teacher else None,
}


def oracle_of_sources(teacher: dict[str, Any], runs: list[int], sources: Sequence[str], cap: int,
                      costs: CostModel) -> float | None:
    """The oracle's modelled seconds of one turn over a set of draft sources (None: a turn recorded before context
    lookup was, so it has no lookup runs)."""
    lookup = next((s for s in ("lookup", "bigram") if s in sources), None)
    if lookup is not None and lookup not in teacher:
        return None
    return oracle(runs, cap, teacher["prompt_tokens"], costs, teacher[lookup] if lookup else None,
                  small="small" in sources)[0]


@dataclass
class Along:
    """What the anchor's outputs give, per turn (`(prompt, turn)` keys) of each prompt it has a teacher for: the
    small model's accepted runs and each source set's oracle seconds (None: a turn recorded before the teacher
    knew that source), and what the ideal and the calibration table read."""

    done: list[int]
    large: float = 0.0  # the anchor's modelled seconds
    per_turn: dict[str, dict[tuple[int, int], float | None]] = field(default_factory=dict)
    fixed: dict[int, float] = field(default_factory=dict)  # seconds of each fixed draft length
    turns: dict[tuple[int, int], tuple[list[int], dict[str, Any]]] = field(default_factory=dict)  # runs, teacher

    def prompt_seconds(self, name: str, i: int) -> float | None:
        """Source set `name`'s oracle seconds over prompt `i`'s turns."""
        found = [v for (p, _), v in self.per_turn[name].items() if p == i]
        return None if any(v is None for v in found) else sum(found)

    @property
    def totals(self) -> dict[str, float | None]:
        return {name: None if any(v is None for v in per.values()) else sum(per.values())
                for name, per in self.per_turn.items()}


def along(anchor: Sequence[Any], cap: int, costs: CostModel) -> Along:
    """Price every oracle and fixed schedule along the anchor's outputs."""
    found = Along(done=[i for i, m in enumerate(anchor) if m.teacher],
                  per_turn={name: {} for name in SOURCE_SETS}, fixed=dict.fromkeys(range(1, cap + 1), 0.0))
    for i in found.done:
        for t, teacher in enumerate(anchor[i].teacher):
            runs, prompt = accepted_runs(teacher["matches"]), teacher["prompt_tokens"]
            for name, sources in SOURCE_SETS.items():
                found.per_turn[name][i, t] = oracle_of_sources(teacher, runs, sources, cap, costs)
            for g in found.fixed:
                found.fixed[g] += price(fixed_rounds(runs, g), prompt, costs)
            found.turns[i, t] = runs, teacher
        found.large += costs.seconds(anchor[i].stats)
    return found


def bench_limit(found: Along, anchor: Sequence[Any], cap: int, costs: CostModel) -> dict[str, Any]:
    """The bench's oracle summary: speedups over `large` of each source set's oracle, the best fixed length, the
    confidence ideal and the closed form, and the small model's calibration table."""
    totals, large = found.totals, found.large
    oracle_time = totals["small"]
    gamma = min(found.fixed, key=found.fixed.get)
    matches = [ok for _, teacher in found.turns.values() for ok in teacher["matches"]]
    probs = [p for _, teacher in found.turns.values() for p in teacher["max_prob"]]
    alpha = sum(matches) / len(matches) if matches else 0.0
    repeats = [r for r in (repetition(anchor[i].tokens) for i in found.done) if r is not None]
    ladder = {name: ideal_of(found, signal, cap, costs) for name, signal in SIGNALS.items()}
    return {"prompts": len(found.done), "cap": cap,
            "modelled_speedup": large / oracle_time if oracle_time else None,
            "sources": {name: large / total if total else None for name, total in totals.items()},
            "repetition": sum(repeats) / len(repeats) if repeats else None,
            "best_fixed": {"gamma": gamma,
                           "modelled_speedup": large / found.fixed[gamma] if found.fixed[gamma] else None},
            "ideal": ladder["confidence"], "ideal_ladder": ladder,
            "closed_form": closed_form(alpha, costs.ratio, cap), "agreement": alpha,
            "per_prompt_oracle_speedup": [costs.seconds(anchor[i].stats) / found.prompt_seconds("small", i)
                                          for i in found.done],
            "calibration": calibration(matches, probs)}


def ideal_of(found: Along, signal: Callable[[dict[str, Any]], list[Hashable] | None], cap: int, costs: CostModel
             ) -> dict[str, float] | None:
    """The ideal of one signal: its modelled speedup over `large` and the chain oracle's time over its."""
    turns = list(found.turns.values())
    keys = [signal(teacher) for _, teacher in turns]
    if not keys or any(k is None for k in keys):
        return None
    seconds = ideal([(runs, k, teacher["prompt_tokens"]) for (runs, teacher), k in zip(turns, keys, strict=True)],
                    cap, costs)
    oracle_time = found.totals["small"]
    return {"modelled_speedup": found.large / seconds, "efficiency": oracle_time / seconds} if seconds else None


def method_limit(found: Along, anchor: Sequence[Any], measured: Sequence[Any], method_cap: int,
                 sources: tuple[str, ...], cap: int, costs: CostModel) -> dict[str, Any]:
    """One lossless method against the oracle of its own sources and the chain oracle, and where it loses against
    its own: `gap` for the small model's methods, `source_gap` for the others (None: turns recorded before the
    teacher knew their sources)."""
    own, totals = "+".join(sources), found.totals
    if own not in found.per_turn:  # a source the oracle does not model: no bound of its own
        return {"efficiency": None, "sources": list(sources), "oracle_own": None, "efficiency_own": None,
                "gap_seconds": None, "gap_share": None, "per_prompt_efficiency": []}
    causes: dict[str, float] | None = {}
    seconds, per_prompt = 0.0, []
    for i in found.done:
        for t, teacher in enumerate(anchor[i].teacher):
            rounds, best = [Round(*r) for r in measured[i].rounds[t]], found.per_turn[own][i, t]
            if best is None:
                causes = None
            elif causes is not None:
                split = (gap(rounds, found.turns[i, t][0], method_cap, cap, teacher["prompt_tokens"], costs, best)
                         if sources == ("small",) else
                         source_gap(rounds, teacher["matches"], teacher["lookup"], sources, teacher["prompt_tokens"],
                                    costs, best))
                for k, v in split.items():
                    causes[k] = causes.get(k, 0.0) + v
        spent = costs.seconds(measured[i].stats)
        seconds += spent
        mine = found.prompt_seconds(own, i)
        per_prompt.append(mine / spent if mine is not None else None)
    return {"efficiency": totals["small"] / seconds if seconds else None, "sources": list(sources),
            "oracle_own": found.large / totals[own] if totals[own] else None,
            "efficiency_own": totals[own] / seconds if seconds and totals[own] else None,
            "gap_seconds": causes or None,
            "gap_share": {k: v / causes["gap"] if causes["gap"] else 0.0 for k, v in causes.items() if k != "gap"}
            if causes else None,
            "per_prompt_efficiency": per_prompt}


def limit(anchor: Sequence[Any], methods: dict[str, tuple[Sequence[Any], int, tuple[str, ...]]], cap: int,
          costs: CostModel) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The oracle of a bench, over each set of draft sources, and each lossless method's efficiency against the
    oracle of its own sources and against the small model's alone (the chain oracle, for continuity).

    `anchor`: the `large` method's measurements (with `teacher`: the small model teacher-forced along each turn of
    each output, and context lookup's accepted runs, and `stats`); `methods`: name -> (measurements with `stats`
    and `rounds` per turn, the method's draft cap, its draft sources), lossless methods only, on the same prompts.
    Times are modelled by `costs`; speedups are over `large`. The gap split is for the small model's methods.
    """
    found = along(anchor, cap, costs)
    return bench_limit(found, anchor, cap, costs), {
        name: method_limit(found, anchor, measured, method_cap, sources, cap, costs)
        for name, (measured, method_cap, sources) in methods.items()}
