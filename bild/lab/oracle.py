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

from collections.abc import Sequence
from typing import Any

import torch

from bild.costs import CostModel
from bild.pair import ModelPair
from bild.schedule import Position, Round, passes, play
from bild.sources import ContextLookup
from bild.stats import GenerationStats


@torch.inference_mode()
def teacher_forced(pair: ModelPair, prompt_ids: list[int], tokens: list[int]) -> tuple[list[bool], list[float]]:
    """At each position of `tokens` (the large model's output): whether the small model's greedy draft, given
    the true prefix, is that token; and the small model's max probability there. One pass."""
    if not tokens:
        return [], []
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
    return (arg == torch.tensor(tokens, device=device)).tolist(), top.tolist()


def teach(pair: ModelPair, prompts: Sequence[list[int]], tokens: Sequence[int], turns: Sequence[int]
          ) -> list[dict[str, Any]]:
    """The small model teacher-forced along an output, one pass per turn (`prompts[t]` then that turn's `turns[t]`
    tokens): per turn its matches, its max probabilities, the (decoder's) prompt length, and how much of context
    lookup's proposal the large model keeps at each position: what the oracle reads."""
    found, start = [], 0
    for ids, count in zip(prompts, turns, strict=True):
        output = list(tokens[start: start + count])
        matches, probs = teacher_forced(pair, ids, output)
        decoder = [pair.large.config.decoder_start_token_id] if pair.encoder_decoder else list(ids)
        found.append({"matches": matches, "max_prob": probs, "prompt_tokens": len(decoder),
                      "lookup": lookup_runs(decoder, output)})
        start += count
    return found


def lookup_runs(sequence: list[int], tokens: Sequence[int], max_ngram: int = 3) -> list[int]:
    """At each position t of `tokens` (the large model's output after `sequence`, the decoder's prompt): how many
    tokens of context lookup's proposal there the large model keeps (its proposal from the true prefix)."""
    source, seq, found = ContextLookup(max_ngram=max_ngram), list(sequence), []
    for t in range(len(tokens)):
        proposal = source.propose(seq, len(tokens) - t)
        run = 0
        for guess, true in zip(proposal.tokens if proposal else [], tokens[t:], strict=False):
            if guess != true:
                break
            run += 1
        found.append(run)
        seq.append(tokens[t])
    return found


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


def ideal(turns: Sequence[tuple[list[int], list[float], int]], cap: int, costs: CostModel) -> float:
    """Modelled seconds of the confidence ideal over `turns` (accepted runs, max probabilities, prompt tokens):
    acceptance by max probability calibrated on these turns, the rate found by fixed-point iteration."""
    matches = [r > 0 for runs, _, _ in turns for r in runs]
    probs = [p for _, ps, _ in turns for p in ps]
    table = {int(b["max_prob"] * CALIBRATION_BINS): b["acceptance"] for b in calibration(matches, probs)}
    survives = [[table[calibration_bin(p)] for p in ps] for _, ps, _ in turns]
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
             price([Round(r.kept, r.kept, discarded=r.kept == 0) for r in method], prompt_tokens, costs),
             price(greedy_rounds(runs, method_cap), prompt_tokens, costs),
             price(greedy_rounds(runs, cap), prompt_tokens, costs),
             best]
    return {"gap": steps[0] - steps[-1], "rejected": steps[0] - steps[1], "early_stops": steps[1] - steps[2],
            "cap": steps[2] - steps[3], "schedule": steps[3] - steps[4]}


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


SOURCE_SETS = {"small": ("small",), "small+lookup": ("small", "lookup"), "lookup": ("lookup",)}


def oracle_of_sources(teacher: dict[str, Any], runs: list[int], sources: Sequence[str], cap: int,
                      costs: CostModel) -> float | None:
    """The oracle's modelled seconds of one turn over a set of draft sources (None: a turn recorded before context
    lookup was, so it has no lookup runs)."""
    if "lookup" in sources and "lookup" not in teacher:
        return None
    return oracle(runs, cap, teacher["prompt_tokens"], costs, teacher["lookup"] if "lookup" in sources else None,
                  small="small" in sources)[0]


def limit(anchor: Sequence[Any], methods: dict[str, tuple[Sequence[Any], int, tuple[str, ...]]], cap: int,
          costs: CostModel) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The oracle of a bench, over each set of draft sources, and each lossless method's efficiency against the
    oracle of its own sources and against the small model's alone (the chain oracle, for continuity).

    `anchor`: the `large` method's measurements (with `teacher`: the small model teacher-forced along each turn of
    each output, and context lookup's accepted runs, and `stats`); `methods`: name -> (measurements with `stats`
    and `rounds` per turn, the method's draft cap, its draft sources), lossless methods only, on the same prompts.
    Times are modelled by `costs`; speedups are over `large`. The gap split is for the small model's methods.
    """
    done = [i for i, m in enumerate(anchor) if m.teacher]
    large = 0.0
    fixed = dict.fromkeys(range(1, cap + 1), 0.0)
    matches: list[bool] = []
    probs: list[float] = []
    runs_of: dict[tuple[int, int], list[int]] = {}
    best_of: dict[tuple[int, int], float] = {}  # the chain oracle's seconds per turn: each method's gap reads it
    turns: list[tuple[list[int], list[float], int]] = []
    per_set: dict[str, dict[int, float | None]] = {name: {} for name in SOURCE_SETS}  # per prompt
    for i in done:
        for name in SOURCE_SETS:
            per_set[name][i] = 0.0
        for t, teacher in enumerate(anchor[i].teacher):
            runs_of[i, t] = accepted_runs(teacher["matches"])
            for name, sources in SOURCE_SETS.items():
                found = oracle_of_sources(teacher, runs_of[i, t], sources, cap, costs)
                per_set[name][i] = None if found is None or per_set[name][i] is None else per_set[name][i] + found
            best_of[i, t] = oracle(runs_of[i, t], cap, teacher["prompt_tokens"], costs)[0]
            for g in fixed:
                fixed[g] += price(fixed_rounds(runs_of[i, t], g), teacher["prompt_tokens"], costs)
            matches += teacher["matches"]
            probs += teacher["max_prob"]
            turns.append((runs_of[i, t], teacher["max_prob"], teacher["prompt_tokens"]))
        large += costs.seconds(anchor[i].stats)
    totals = {name: None if any(v is None for v in per.values()) else sum(per.values())
              for name, per in per_set.items()}
    oracle_time, oracle_of = totals["small"], per_set["small"]
    gamma = min(fixed, key=fixed.get)
    alpha = sum(matches) / len(matches) if matches else 0.0
    outputs = [anchor[i].tokens for i in done]
    repeats = [r for r in map(repetition, outputs) if r is not None]
    summary = {"prompts": len(done), "cap": cap, "modelled_speedup": large / oracle_time if oracle_time else None,
               "sources": {name: large / total if total else None for name, total in totals.items()},
               "repetition": sum(repeats) / len(repeats) if repeats else None,
               "best_fixed": {"gamma": gamma, "modelled_speedup": large / fixed[gamma] if fixed[gamma] else None},
               "ideal": ({"modelled_speedup": large / ideal_time, "efficiency": oracle_time / ideal_time}
                         if (ideal_time := ideal(turns, cap, costs)) else None),
               "closed_form": closed_form(alpha, costs.ratio, cap), "agreement": alpha,
               "per_prompt_oracle_speedup": [costs.seconds(anchor[i].stats) / oracle_of[i] for i in done],
               "calibration": calibration(matches, probs)}
    rows = {}
    for name, (measured, method_cap, sources) in methods.items():
        own = "+".join(sources)
        if own not in per_set:  # a source the oracle does not model: no bound of its own
            rows[name] = {"efficiency": None, "sources": list(sources), "oracle_own": None, "efficiency_own": None,
                          "gap_seconds": None, "gap_share": None, "per_prompt_efficiency": []}
            continue
        chain = sources == ("small",)
        causes = dict.fromkeys(("gap", "rejected", "early_stops", "cap", "schedule"), 0.0)
        seconds, per_prompt = 0.0, []
        for i in done:
            for t, teacher in enumerate(anchor[i].teacher):
                if chain:
                    rounds = [Round(*r) for r in measured[i].rounds[t]]
                    split = gap(rounds, runs_of[i, t], method_cap, cap, teacher["prompt_tokens"], costs,
                                best_of[i, t])
                    for k, v in split.items():
                        causes[k] += v
            spent = costs.seconds(measured[i].stats)
            seconds += spent
            per_prompt.append(per_set[own][i] / spent if per_set[own][i] is not None else None)
        rows[name] = {"efficiency": oracle_time / seconds if seconds else None, "sources": list(sources),
                      "oracle_own": large / totals[own] if totals[own] else None,
                      "efficiency_own": totals[own] / seconds if seconds and totals[own] else None,
                      "gap_seconds": causes if chain else None,
                      "gap_share": {k: v / causes["gap"] if causes["gap"] else 0.0 for k, v in causes.items()
                                    if k != "gap"} if chain else None,
                      "per_prompt_efficiency": per_prompt}
    return summary, rows
