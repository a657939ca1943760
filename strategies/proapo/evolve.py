"""ProAPO's evolutionary loop over item sets (templates in stage 1, class descriptions in stage 2).

Reference: MorningStarOvO/ProAPO@fefdf18 ``tools/process/task_specific_selection.py:
iterative_select_task_specific_optimal_prompt`` (read, re-implemented, no code copied). Per epoch: the score table is
sorted, the ``num_top`` best sets are the parents; from each parent ``num_add`` / ``num_remove`` / ``num_replace``
new sets are made (edit size 1, or ``2**j`` with ``j`` from a momentum-updated weight table with ``add_mode="more"``),
then ``num_mutation`` fresh random sets and ``num_crossover`` recombinations of the parents. Each operator tries
``n + 64`` times for ``n`` sets never seen before (de-duplicated as sets).

Official quirk (default, ``sort_quirk=True``): the table is sorted at the *start* of each epoch and the result is
the best of the last sort, so the last epoch's candidates are never selected; ``sort_quirk=False`` returns the best
of every candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ctta.clip_prompting.search import (
    EditSizeTable,
    SearchHistory,
    Seen,
    add_items,
    crossover,
    propose,
    remove_items,
    replace_items,
)


@dataclass(frozen=True)
class EvolveSettings:
    """Counts and switches of one evolutionary search (the reference's argument names in comments)."""

    epochs: int = 8
    num_top: int = 4
    num_add: int = 8
    num_remove: int = 8
    num_replace: int = 8
    num_mutation: int = 8
    num_crossover: int = 16
    add_mode: str = "one"  # add_mode: "one" (edit 1 item) | "more" (2**j items, j from the weight table)
    weighted: bool = False  # prompt_sample_mode "weighted": items drawn by their single-item fitness gain
    weighted_mode: str = "linear"  # linear | exp
    momentum: float = 0.9  # weighted_momentum
    epsilon: float = 1.0  # threshold_epsilon_linear / _exp
    crossover_mode: str = "slow"  # slow: parents of the epoch's start | quick: the best after this epoch's edits
    sort_quirk: bool = True


@dataclass
class Candidate:
    items: tuple
    fitness: float
    scores: dict[str, float]


class Evolution:
    """One evolutionary search. ``score(items) -> (fitness, scores)``; ``item_weight`` gives each item's weight
    (weighted sampling); ``mutation(epoch, k)`` makes a fresh set (None: none); ``valid`` filters candidates;
    ``show(items)`` is what the history records of a candidate."""

    def __init__(self, pool: Sequence, score: Callable, settings: EvolveSettings, rng, history: SearchHistory,
                 *, baseline: float = 0.0, item_weight: dict | None = None,
                 mutation: Callable[[int, int], Any] | None = None, valid: Callable[[tuple], bool] | None = None,
                 stage: str = "", step0: int = 0, bar=None, show: Callable | None = None) -> None:  # fmt: skip
        self.pool, self.score, self.s, self.rng, self.history = list(pool), score, settings, rng, history
        self.baseline, self.item_weight, self.valid = baseline, item_weight, valid or (lambda c: True)
        self.mutation, self.stage, self.step0, self.bar = mutation, stage, step0, bar
        self.show = show or list  # items -> the history's candidate (e.g. template texts)
        self.table: list[Candidate] = []
        self.seen = Seen()
        size = max(1, int(math.log2(max(len(self.pool), 1))) - int(math.log2(max(settings.epochs, 1))))
        self.sizes = {op: EditSizeTable(size, settings.weighted_mode, settings.momentum, settings.epsilon)
                      for op in ("add", "remove", "replace", "mutation")}  # fmt: skip

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, items: Sequence, step: int, op: str) -> Candidate:
        fitness, scores = self.score(tuple(items))
        c = Candidate(tuple(items), float(fitness), scores)
        self.table.append(c)
        row = {"fitness": c.fitness, **scores}
        self.history.append(self.step0 + step, self.show(items), row, stage=self.stage, op=op)
        return c

    def _weights(self, items: Sequence) -> list[float] | None:
        return None if not self.s.weighted or self.item_weight is None else [self.item_weight[x] for x in items]

    def _size(self, op: str, limit: int | None) -> tuple[int, int | None]:
        """``(edit size, table index)``: 1 with ``add_mode="one"``, else ``2**j``."""
        if self.s.add_mode == "one":
            return 1, None
        j = self.sizes[op].draw(self.rng, limit, weighted=self.s.weighted)
        return 2**j, j

    def _learn(self, op: str, j: int | None, c: Candidate) -> None:
        if j is not None and self.s.weighted:
            self.sizes[op].update(j, c.fitness, self.baseline)

    # ------------------------------------------------------------------ operators
    def _run_op(self, op: str, n: int, make: Callable[[], tuple[Any, int | None]], step: int) -> None:
        """Evaluate up to ``n`` new valid candidates from ``make() -> (items or None, table index)``."""
        last_j: list = [None]

        def one():
            items, last_j[0] = make()
            return items if items is not None and self.valid(tuple(items)) else None

        for items in propose(one, n, self.seen):
            self._learn(op, last_j[0], self.evaluate(items, step, op))
            if self.bar is not None:
                self.bar.update(1)

    def _edits(self, parent: tuple, step: int) -> None:
        s, w_pool = self.s, self._weights(self.pool)
        rest = [x for x in self.pool if x not in parent]
        if not rest:
            return
        local = int(math.log2(max(len(parent), 1)))

        def add():
            k, j = self._size("add", None)
            return add_items(self.rng, parent, self.pool, k, w_pool), j

        def remove():
            k, j = self._size("remove", local)
            return remove_items(self.rng, parent, k, self._weights(parent)), j

        def replace():
            k, j = self._size("replace", local)
            return replace_items(self.rng, parent, self.pool, k, self._weights(parent), w_pool), j

        self._run_op("add", s.num_add, add, step)
        if len(parent) > 2:  # the reference removes only from sets of three or more
            self._run_op("remove", s.num_remove, remove, step)
        self._run_op("replace", s.num_replace, replace, step)

    def _mutations(self, epoch: int, local: int, step: int) -> None:
        if self.mutation is None:
            return

        def make():
            if self.s.add_mode == "one":
                return self.mutation(epoch, 2 + epoch), None
            k, j = self._size("mutation", local)
            return self.mutation(epoch, k + 2), j

        self._run_op("mutation", self.s.num_mutation, make, step)

    def _crossovers(self, parents: list[tuple], step: int) -> None:
        if self.s.crossover_mode == "quick":
            parents = [c.items for c in self._sorted()[: self.s.num_top]]
        self._run_op("crossover", self.s.num_crossover, lambda: (crossover(self.rng, parents), None), step)

    # ------------------------------------------------------------------ the loop
    def _sorted(self) -> list[Candidate]:
        return sorted(self.table, key=lambda c: -c.fitness)  # stable: earlier first among ties

    def run(self, init: Sequence[Sequence]) -> Candidate:
        """Evaluate ``init`` (step 0), evolve ``epochs`` epochs (steps 1..epochs); returns the selected set."""
        for items in init:
            if self.seen.add(tuple(items)):
                self.evaluate(items, 0, "init")
        best = self._sorted()[0]
        for epoch in range(self.s.epochs):
            ranked = self._sorted()
            best = ranked[0]
            parents = [c.items for c in ranked[: self.s.num_top]]
            if len(parents) < self.s.num_top:
                parents = self.rng.choices(parents, k=self.s.num_top)
            for p in parents:
                self.seen.add(p)
                self._edits(p, epoch + 1)
            self._mutations(epoch, int(math.log2(max(len(parents[-1]), 1))), epoch + 1)
            self._crossovers(parents, epoch + 1)
        return best if self.s.sort_quirk else self._sorted()[0]
