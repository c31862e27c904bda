"""One model's side of one generation: how much of the shared token sequence its cache holds.

Both models read one shared token sequence (a Python list of ids; for encoder-decoders the
decoder's sequence, the prompt going to the encoder once). A `Decoder` remembers how many
positions of it its runner's cache holds (`seen`, counted on the host: the truth, never read
back from the device). `catch_up` feeds every position it has not seen in ONE pass (the prompt
on the first call, then one token or a whole draft), and `rewind` cuts the cache back after a
rollback. No position is ever recomputed unless it was rolled back: the invariant the tests
check through the pass counts.

Per pass it counts how many tokens were fed (a histogram by length: what the cost model
prices) and the seconds spent, the host sync of the pass's summary included; `stats()` gives
them with the fast path the runner ran on.
"""

from __future__ import annotations

import time
from collections import Counter

from bild.forward import Pass, Runner
from bild.stats import ModelStats


class Decoder:
    def __init__(self, runner: Runner, capacity: int, encoder_ids: list[int] | None = None) -> None:
        runner.start(capacity, encoder_ids)
        self.runner = runner
        self.seen = 0
        self.prefill = 0  # tokens of the first pass (the prompt, or the decoder start for encoder-decoders)
        self.passes: Counter[int] = Counter()  # later passes by tokens fed
        self.seconds = 0.0

    def catch_up(self, seq: list[int], keep: int) -> Pass:
        """Feed `seq[seen:]` in one pass; the last `keep` rows of its output."""
        started = time.perf_counter()
        out = self.runner.feed(seq[self.seen:], keep)
        self.seconds += time.perf_counter() - started
        fed = len(seq) - self.seen
        if self.seen == 0:
            self.prefill = fed
        else:
            self.passes[fed] += 1
        self.seen = len(seq)
        return out

    def rewind(self, length: int) -> None:
        """Forget every position from `length` on."""
        if length < self.seen:
            self.runner.rewind(self.seen - length)
            self.seen = length

    @property
    def calls(self) -> int:
        return (self.prefill > 0) + sum(self.passes.values())

    @property
    def positions(self) -> int:
        return self.prefill + sum(n * c for n, c in self.passes.items())

    def stats(self) -> ModelStats:
        captured, buckets = self.runner.graphs
        return ModelStats(calls=self.calls, positions=self.positions, prefill=self.prefill,
                          passes=dict(sorted(self.passes.items())), seconds=self.seconds,
                          fast_path=self.runner.fast_path, graphs_captured=captured, graph_buckets=buckets)
