"""One model's forward passes on a chosen fast path, and the summary every decision reads.

A `Runner` owns one model's KV cache and feeds it tokens at the cache's end. It lives as long as
the pair (`ModelPair.runner` keeps one per model and fast path), so static buffers and captured
graphs are built once per process and shape and only reset per prompt:

    off       a dynamic cache, eager passes of exactly the tokens fed (any model)
    static    a static cache rewound by position, eager passes (works on CPU; what CPU tests use)
    graph     a static cache, passes padded to a few lengths ("buckets") and replayed as CUDA graphs
    compile   the same padded step under torch.compile(mode="reduce-overhead", fullgraph=True)

`resolve_fast_path` decides once per model which of these serves it; the runner carries the
answer (`Runner.fast_path`, and for padded runners how many buckets were captured), and every
generation's statistics report it.

Every pass computes, on the device, what the decisions read: per row the argmax, the top
`TOP` probabilities, the entropy and the negative log-probability of the next token fed (the
drafts' NLL in a verification). `summarize` packs them in one `[T, 3 + TOP]` tensor that is
copied to the host once: the only host sync of a greedy step. A `Pass` owns its tensors: a padded
pass copies its logits and hidden state out of the graph's static buffers (device copies, no
sync), so a policy may hold them while later passes replay the same graph.

Padding: a verification of T tokens runs in the smallest bucket B >= T; the B - T pad tokens
land after the real ones, so causal masking hides them from every real position, and the
runner drops them from the cache before its next pass. The first pass of a generation (the
prompt) and passes longer than the top bucket run eagerly at their exact length.

Capture: a padded runner prepares every bucket when a generation starts on a cache that lacks
it (once per cache: in a bench, during its warm-up), from position 0 of the empty cache, by a
`Capture`: CUDA graphs on one side stream into one memory pool, or torch.compile. Each capture
is then replayed once against the eager pass on the same inputs (a graph that recorded nothing
reports itself captured and replays stale outputs). A bucket whose capture fails either way runs
eagerly, with one warning line.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

import torch
from transformers import PreTrainedModel

from bild.cache import cache_kwarg, dynamic_cache, restart, rewind, static_cache, static_unsupported
from bild.errors import BildError

log = logging.getLogger("bild")

TOP = 4  # probabilities of the most likely tokens each pass reports (a margin, a runner-up's weight)
REPLAY_TOLERANCE = 0.05  # a replay's logits within this share of the largest eager logit: the capture computes
Step = Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # a padded pass: logits, summary, hidden
Undo = Callable[[], None]  # puts the cache's pointer back where it was before the step ran
Capture = Callable[[Step, Undo], Step]  # a padded pass over static inputs -> its fast version


class Pass(NamedTuple):
    """What one forward pass gives the engine: `rows` positions, the last ones fed."""

    logits: torch.Tensor  # [rows, V], owned by the caller
    argmax: list[int]  # [rows]
    top_probs: list[list[float]]  # [rows, TOP], most likely first
    entropy: list[float]  # [rows] nats
    next_nll: list[float]  # [rows] −log p(token fed after this row); 0 for the last fed row
    hidden: torch.Tensor  # [H] the last row's final hidden state, owned by the caller


def summarize(logits: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
    """Per row: argmax, entropy, −log p(next id), the top probabilities. # [T, V], [T] -> [T, 3 + TOP]"""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [T, V]
    top, arg = logp.topk(min(TOP, logp.shape[-1]), dim=-1)  # [T, TOP]
    entropy = -(logp.exp() * logp.clamp_min(-1e30)).sum(dim=-1)  # clamp: 0 * -inf is nan
    nll = -logp.gather(-1, next_ids[:, None]).squeeze(-1)  # [T]
    return torch.cat([torch.stack([arg[:, 0].float(), entropy, nll], dim=-1), top.exp()], dim=-1)


def to_pass(logits: torch.Tensor, summary: torch.Tensor, hidden: torch.Tensor) -> Pass:
    """The host view of one pass: one device-to-host copy of the summary."""
    rows = summary.tolist()
    return Pass(logits, [int(r[0]) for r in rows], [r[3:] for r in rows], [r[1] for r in rows],
                [*(r[2] for r in rows[:-1]), 0.0], hidden)


def _head_input_of_its_own(module: torch.nn.Module, args: tuple) -> tuple | None:
    """Give the output layer a tensor of its own when a pass keeps fewer rows than it fed.

    `logits_to_keep` hands the output layer a view of the last rows, offset into the hidden states;
    on some CPU builds a bf16 matrix product over such a view leaves the fast kernel (a multi-token
    pass keeping one row was measured at 4-5x the same pass keeping all rows, on a 151,936-token
    output layer). A copy of `keep` rows costs microseconds."""
    hidden = args[0]
    if torch.compiler.is_compiling() or (hidden.storage_offset() == 0 and hidden.is_contiguous()):
        return None  # a compiled step has kernels of its own
    return (hidden.clone(memory_format=torch.contiguous_format), *args[1:])


class Runner(ABC):
    """Feeds one model tokens at the end of its cache; reset per generation, kept per pair."""

    fast_path = "off"

    def __init__(self, model: PreTrainedModel, vocab: int, label: str = "model") -> None:
        self.model = model
        self.vocab = vocab  # logit width shared with the other model
        self.label = label  # which model of the pair, for messages
        self.device = model.device
        self.encoder_decoder = bool(model.config.is_encoder_decoder)
        self.input_key = "decoder_input_ids" if self.encoder_decoder else "input_ids"
        self.cache_key = cache_kwarg(model)
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.encoder_outputs = None
        self.hidden: torch.Tensor | None = None  # the output layer's input in the last pass: [1, rows, H]
        head = model.get_output_embeddings()
        head.register_forward_pre_hook(_head_input_of_its_own)
        head.register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.hidden = args[0]

    @property
    def graphs(self) -> tuple[int, int]:
        """(buckets captured, buckets) of a padded runner; (0, 0) for an eager one."""
        return 0, 0

    def widen(self, most: int) -> None:  # noqa: B027  (a no-op for runners that do not pad)
        """Make passes of up to `most` tokens fast too (padded runners only)."""

    def start(self, capacity: int, encoder_ids: list[int] | None = None) -> None:
        """Empty the cache for a generation of at most `capacity` positions (prompt included)."""
        if self.encoder_decoder:
            ids = torch.tensor([encoder_ids], device=self.device)  # [1, S]
            self.encoder_outputs = self.model.get_encoder()(input_ids=ids)

    @abstractmethod
    def feed(self, ids: list[int], keep: int) -> Pass:
        """Feed `ids` after the cached positions; the last `keep` rows of the pass."""

    @abstractmethod
    def rewind(self, drop: int) -> None:
        """Forget the last `drop` positions fed."""

    def forward(self, ids: torch.Tensor, cache: object, keep: int) -> torch.Tensor:
        """One eager pass over `ids` [1, T] after the cached positions; the logits of the last `keep`. # [keep, V]"""
        kwargs = {self.input_key: ids, self.cache_key: cache, "use_cache": True}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        if self.encoder_outputs is not None:
            kwargs["encoder_outputs"] = self.encoder_outputs
        return self.model(**kwargs).logits[0, -keep:, : self.vocab]

    def eager_pass(self, ids: list[int], cache: object, keep: int) -> Pass:
        tensor = torch.tensor([ids], device=self.device)  # [1, T]
        logits = self.forward(tensor, cache, keep)  # [keep, V]
        nxt = torch.cat([tensor[0, len(ids) - keep + 1:], tensor.new_zeros(1)])  # [keep]
        return to_pass(logits, summarize(logits, nxt), self.hidden[0, -1])  # fresh tensors: nothing reuses them


class DynamicRunner(Runner):
    """`off`: a fresh dynamic cache per generation, eager passes of exactly what is fed."""

    def start(self, capacity: int, encoder_ids: list[int] | None = None) -> None:
        super().start(capacity, encoder_ids)
        self.cache = dynamic_cache(self.model, self.encoder_decoder)

    def feed(self, ids: list[int], keep: int) -> Pass:
        return self.eager_pass(ids, self.cache, keep)

    def rewind(self, drop: int) -> None:
        rewind(self.cache, drop)


class StaticRunner(Runner):
    """`static`: one preallocated cache rewound by position; eager passes of exactly what is fed.

    The host counts the positions the cache holds (`length`), so nothing reads the device pointer;
    `start` sets both to zero, so a pass interrupted by an exception cannot leave them apart.
    """

    fast_path = "static"

    def __init__(self, model: PreTrainedModel, vocab: int, context: int | None, label: str = "model") -> None:
        super().__init__(model, vocab, label)
        self.context = context  # the model's own limit on positions, if any
        self.cache = None
        self.capacity = 0  # positions a generation may use (what `start` sizes against)
        self.positions = 0  # positions the cache holds: the capacity, and a padded runner's pad room
        self.length = 0  # positions the cache's pointer is past (pads included)

    def start(self, capacity: int, encoder_ids: list[int] | None = None) -> None:
        super().start(capacity, encoder_ids)
        if capacity > self.capacity:
            # round up so prompts of similar length share one cache (and its captured graphs)
            self.allocate(max(256, 1 << (capacity - 1).bit_length()))
        restart(self.cache)
        self.length = 0

    def allocate(self, capacity: int, room: int = 0) -> None:
        """A cache for generations of `capacity` positions, with `room` more for pads."""
        self.cache = static_cache(self.model, capacity + room)
        self.capacity, self.positions = capacity, capacity + room

    def reserve(self, count: int) -> None:
        if self.length + count > self.positions:
            raise BildError(f"a pass of {count} tokens after {self.length} cached ones overflows the static KV "
                            f"cache of {self.positions} positions: size the generation with its real prompt and "
                            "max_new_tokens, or use fast_path='off'")

    def feed(self, ids: list[int], keep: int) -> Pass:
        self.reserve(len(ids))
        out = self.eager_pass(ids, self.cache, keep)
        self.length += len(ids)
        return out

    def rewind(self, drop: int) -> None:
        rewind(self.cache, drop)
        self.length -= drop


def buckets_for(most: int) -> list[int]:
    """Padded pass lengths: every length up to `most` when it is small, else powers of two."""
    if most <= 16:
        return list(range(1, most + 1))
    return powers_of_two(most)


def powers_of_two(most: int) -> list[int]:
    """1, 2, 4, ... up to the first power of two >= `most`."""
    return [1 << i for i in range((most - 1).bit_length() + 1)]


PAD_ROOM = 32  # positions a padded cache keeps past its capacity, so a larger draft cap needs no new cache


class PaddedRunner(StaticRunner):
    """`graph` and `compile`: passes padded to buckets, each bucket's step prepared once per cache by `capture`."""

    def __init__(self, model: PreTrainedModel, vocab: int, context: int | None, most: int, capture: Capture,
                 fast_path: str, bucketing: Callable[[int], list[int]] = buckets_for, label: str = "model") -> None:
        super().__init__(model, vocab, context, label)
        self.fast_path = fast_path
        self.bucketing = bucketing
        self.buckets = bucketing(most)
        self.capture = capture
        self.steps: dict[int, tuple[torch.Tensor, torch.Tensor, Step]] = {}  # size -> host and device inputs, step
        self.failed: set[int] = set()  # buckets whose capture failed on this cache: they run eagerly
        self.pad = 0  # pad positions at the cache's end, dropped before the next pass
        self.pad_room = 0  # pad positions the cache has room for

    @property
    def graphs(self) -> tuple[int, int]:
        return len(self.steps), len(self.buckets)

    def allocate(self, capacity: int, room: int = 0) -> None:
        self.pad_room = max(self.buckets[-1], PAD_ROOM)
        super().allocate(capacity, self.pad_room)  # room for the pads of a full-length pass, kept apart
        self.steps.clear()  # they point at the old cache (the capture keeps their graphs alive)
        self.failed.clear()

    def widen(self, most: int) -> None:
        if most > self.buckets[-1]:
            self.buckets = sorted(set(self.buckets) | set(self.bucketing(most)))
            if self.buckets[-1] > self.pad_room:
                self.capacity = 0  # the next start reallocates, with room for the longer pads

    def start(self, capacity: int, encoder_ids: list[int] | None = None) -> None:
        super().start(capacity, encoder_ids)
        self.pad = 0
        missing = [b for b in self.buckets if b not in self.steps and b not in self.failed]
        if missing:
            self.prepare(missing)

    def prepare(self, sizes: list[int]) -> None:
        """Capture the step of each bucket in `sizes` on this (empty) cache; a failure leaves a bucket eager."""
        if self.fast_path == "compile":
            log.info("bild: compiling the %s model's passes of %s tokens (once per process; this can take minutes)",
                     self.label, ", ".join(map(str, sizes)))
        # the cache allocates its tensors on its first write: let that happen eagerly, before any capture
        self.forward(torch.zeros(1, 1, dtype=torch.long, device=self.device), self.cache, 1)
        failures = []
        for size in sizes:
            restart(self.cache)
            if self.context and size > self.context:
                self.failed.add(size)
                continue
            try:
                self.steps[size] = self.build(size)
            except Exception as e:  # capture and compilation fail with many types (CUDA, dynamo, inductor)
                self.failed.add(size)
                failures.append((size, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"))
        restart(self.cache)
        if failures:
            log.warning("bild: %d of %d %s buckets of the %s model could not be prepared (passes of %s tokens; first "
                        "error %s); those passes run eagerly", len(failures), len(self.buckets), self.fast_path,
                        self.label, ", ".join(str(s) for s, _ in failures), failures[0][1])

    def build(self, size: int) -> tuple[torch.Tensor, torch.Tensor, Step]:
        """Static inputs of one bucket and its captured step."""
        host = torch.zeros(1, size, dtype=torch.long, pin_memory=self.device.type == "cuda")  # [1, B]
        inputs = torch.zeros(1, size, dtype=torch.long, device=self.device)  # [1, B]

        def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits = self.forward(inputs, self.cache, size)  # [B, V]
            nxt = torch.cat([inputs[0, 1:], inputs.new_zeros(1)])  # [B]
            return logits, summarize(logits, nxt), self.hidden  # hidden: set by the hook in this pass

        def undo() -> None:
            rewind(self.cache, size)

        replay = self.capture(step, undo)
        self.check_replay(inputs, step, replay, undo)
        return host, inputs, replay

    def check_replay(self, inputs: torch.Tensor, step: Step, replay: Step, undo: Undo) -> None:
        """A captured step must compute what the eager one does on the same inputs: a graph recorded on the wrong
        device, or one that recorded nothing, replays stale outputs while reporting itself captured."""
        inputs.copy_(torch.arange(1, inputs.shape[1] + 1, device=inputs.device).mul_(7919).remainder_(self.vocab)
                     .unsqueeze(0))  # [1, B]: tokens unlike the capture's zeros
        eager = step()[0].float().cpu()  # [B, V]
        undo()
        replayed = replay()[0].float().cpu()  # [B, V]
        undo()
        inputs.zero_()
        # kernels may differ (inductor's fused ones) by rounding; stale outputs differ by the logits' own size
        if not (replayed - eager).abs().max() <= REPLAY_TOLERANCE * eager.abs().max() + 1e-4:
            raise RuntimeError("its replay does not compute what the eager pass does (stale outputs)")

    def feed(self, ids: list[int], keep: int) -> Pass:
        self.drop_pads()
        size = next((b for b in self.buckets if b >= len(ids)), None)
        if self.length == 0 or size not in self.steps or (self.context and self.length + size > self.context):
            return super().feed(ids, keep)
        self.reserve(size)
        host, inputs, step = self.steps[size]
        host[0, : len(ids)] = torch.tensor(ids)
        host[0, len(ids):] = ids[-1]  # pads repeat the last token
        inputs.copy_(host, non_blocking=True)  # pinned on CUDA: no sync here
        logits, summary, hidden = step()  # [B, V], [B, 3 + TOP], [1, B, H]: the graph's static outputs
        self.length += size
        self.pad = size - len(ids)
        rows = slice(len(ids) - keep, len(ids))
        return to_pass(logits[rows].clone(), summary[rows], hidden[0, len(ids) - 1].clone())

    def drop_pads(self) -> None:
        if self.pad:
            rewind(self.cache, self.pad)
            self.length -= self.pad
            self.pad = 0

    def rewind(self, drop: int) -> None:
        rewind(self.cache, drop + self.pad)
        self.length -= drop + self.pad
        self.pad = 0


class CudaGraphs:
    """`graph`'s capture: every step of one runner captured on one side stream, into one memory pool.

    The graphs share the pool: they never replay at once, and each one's outputs stay allocated
    while it lives, so none writes over another's. Every graph is kept as long as the runner, since
    later captures may reuse memory (cuBLAS workspaces among it) that an earlier graph recorded.
    Streams, pools and replays belong to the current CUDA device, which need not be the model's
    (`--device cuda:1`, a second rank): capture and replay run with the model's device current, or
    the capture records nothing and every replay returns stale outputs.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream: torch.cuda.Stream | None = None
        self.pool = None
        self.graphs: list[torch.cuda.CUDAGraph] = []

    def __call__(self, step: Step, undo: Undo) -> Step:
        with torch.cuda.device(self.device):
            if self.stream is None:
                self.stream, self.pool = torch.cuda.Stream(self.device), torch.cuda.graph_pool_handle()
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                for _ in range(2):  # allocations, lazy initialisation, autotuning: outside the capture
                    step()
                    undo()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                    outputs = step()  # recorded, not run: the cache's pointer does not move here
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        self.graphs.append(graph)
        device = self.device

        def replay() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            with torch.cuda.device(device):
                graph.replay()
            return outputs

        return replay


def compiled(step: Step, undo: Undo) -> Step:
    """`compile`'s capture: `torch.compile` of the step (CUDA graphs through torch's own machinery on CUDA)."""
    dynamo = torch._dynamo.config
    if hasattr(dynamo, "recompile_limit"):  # one graph per bucket and cache: more than the default 8
        dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
    mode = "reduce-overhead" if torch.cuda.is_available() else None
    fast = torch.compile(step, mode=mode, fullgraph=True, dynamic=False)
    for _ in range(2):  # compile, then let the cudagraph trees record: outside any timed pass
        fast()
        undo()
    return fast


# --- choosing a fast path ------------------------------------------------------------------------


def spread_over(model: PreTrainedModel) -> str | None:
    """How a model is spread over devices (a device_map over several, tensor parallel), or None on one."""
    if getattr(model, "tp_size", None) and model.tp_size > 1:
        return f"tensor parallel over {model.tp_size} ranks"
    placed = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    return f"a device_map over {', '.join(sorted(placed))}" if len(placed) > 1 else None


def resolve_fast_path(requested: str, model: PreTrainedModel, label: str = "model") -> str:
    """The fast path that will serve `model`: `auto` picks `graph` on CUDA where the model allows it, `static`
    (eager) for a model spread over devices (graphs per device are not captured)."""
    reason = static_unsupported(model)
    spread = spread_over(model)
    cuda = model.device.type == "cuda"
    if requested == "auto":
        if cuda and reason:
            log.info("bild: decoding the %s model eagerly (fast_path off): %s", label, reason)
        elif cuda and spread:
            log.info("bild: decoding the %s model on a static cache, eagerly (fast_path static): it is spread as %s, "
                     "and CUDA graphs are captured on one device only", label, spread)
            return "static"
        return "graph" if cuda and not reason else "off"
    if requested != "off" and reason:
        raise BildError(f"fast_path={requested!r} cannot serve the {label} model: {reason}; use --fast-path off")
    if requested in ("graph", "compile") and spread:
        raise BildError(f"fast_path={requested!r} needs the {label} model on one device, but it is spread as {spread}: "
                        "use --fast-path static")
    if requested == "graph" and not cuda:
        raise BildError(f"fast_path='graph' needs a CUDA GPU, but the {label} model is on {model.device.type}: use "
                        "--fast-path static (static cache, eager) or off")
    return requested


def make_runner(model: PreTrainedModel, vocab: int, fast_path: str, most: int, context: int | None,
                label: str = "model") -> Runner:
    """A runner for `model` on a resolved fast path, whose padded passes go up to `most` tokens."""
    if fast_path == "off":
        return DynamicRunner(model, vocab, label)
    if fast_path == "static":
        return StaticRunner(model, vocab, context, label)
    if fast_path == "graph":
        return PaddedRunner(model, vocab, context, most, CudaGraphs(model.device), "graph", label=label)
    return PaddedRunner(model, vocab, context, most, compiled, "compile", powers_of_two, label)  # a shape: a compile
