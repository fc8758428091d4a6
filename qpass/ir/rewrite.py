"""Rewrite rules that look before they change anything, and a driver that applies them.

A `Rule` is two functions. `match(graph, op)` only looks: it returns a `Match` holding what the
rewrite needs, or a `Failure` saying why the rule does not apply (helpers deep inside a match may
raise `NoMatch` instead; the rule turns it into a failure). Only after a match does
`rewrite(graph, op, match)` change the graph, through `Graph`'s methods. A rule that does not
apply therefore leaves nothing behind, and whether anything changed comes from the graph's own
record (`graph.revision`), not from what a rule says.

    def match_double_relu(graph, op):
        inner = graph.producer(op.inputs[0])
        if inner is None or inner.kind != "relu":
            return Failure("the operand is not a relu's result")
        return Match(inner=inner)

    def drop_outer_relu(graph, op, match):
        graph.replace_op(op, match.inner.output, rename=False)

    result = apply_rules(graph, [Rule("double-relu", match_double_relu, drop_outer_relu)], anchor_kind="relu")
    result.changed, result.failures          # failures: op -> why each rule did not apply
"""

from __future__ import annotations

import dataclasses
import types
from typing import Callable, Optional, Sequence, Union

from qpass.errors import IRError
from qpass.ir.graph import Graph, Op


class NoMatch(Exception):
    """Raised inside a match when a rule does not apply; the message says why."""


class Match(types.SimpleNamespace):
    """A successful match: named fields holding what the rule found, for its rewrite."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """A failed match and the reason, kept for reports and debugging."""

    reason: str


MatchFn = Callable[[Graph, Op], Union[Match, Failure]]
RewriteFn = Callable[[Graph, Op, Match], None]


@dataclasses.dataclass(frozen=True)
class Rule:
    """A named rewrite: `match` decides without changing the graph, `rewrite` then changes it."""

    name: str
    match: MatchFn
    rewrite: RewriteFn

    def try_match(self, graph: Graph, op: Op) -> Union[Match, Failure]:
        """The match at `op`, or the failure; an error if the match changed the graph."""
        revision = graph.revision
        try:
            found = self.match(graph, op)
        except NoMatch as e:
            found = Failure(str(e))
        if graph.revision != revision:
            raise IRError(f"rule '{self.name}' changed the graph while matching {op!r}; a match must only "
                          "look, and leave every change to the rewrite")
        return found


@dataclasses.dataclass
class RewriteResult:
    """What `apply_rules` did: whether the graph changed, and for each op no rule rewrote, every
    rule's reason (in rule order)."""

    changed: bool
    failures: dict[Op, list[str]]


def apply_rules(graph: Graph, rules: Sequence[Rule], anchor_kind: Optional[str] = None) -> RewriteResult:
    """One walk over the ops (those of `anchor_kind` only, if given) in program order: at each op
    the first rule that matches rewrites it. Ops an earlier rewrite removed are skipped; ops a
    rewrite creates are not visited."""
    start = graph.revision
    failures: dict[Op, list[str]] = {}
    anchors = graph.find_ops(anchor_kind) if anchor_kind is not None else graph.ops
    for op in anchors:
        if not graph.has_op(op):
            continue
        reasons = []
        for rule in rules:
            found = rule.try_match(graph, op)
            if isinstance(found, Failure):
                reasons.append(found.reason)
                continue
            rule.rewrite(graph, op, found)
            break
        else:
            failures[op] = reasons
    return RewriteResult(graph.revision != start, failures)
