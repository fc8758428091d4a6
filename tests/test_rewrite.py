"""The graph's rewriting API (replace_op, retype, set_attr, revision), its incrementally kept
program order, and the match-then-rewrite rules of qpass.ir.rewrite."""

import random

import networkx as nx
import pytest

from qpass import PassContext, parse_graph, print_graph, run_passes
from qpass.errors import IRError
from qpass.ir import Graph, TensorType
from qpass.ir.rewrite import Failure, Match, NoMatch, Rule, apply_rules
from qpass.passmgr.instruments import Timing

F32 = TensorType((2,), "f32")

CONCAT_WITH_FLOAT = """
graph @main(%x: f32[1,2], %y: f32[1,2]) {
  %xq = quantize(%x) : i8[1,2]{scale=0.125, zp=0}
  %xd = dequantize(%xq) : f32[1,2]
  %cat = concat(%xd, %OTHER) {axis=1} : f32[1,4]
  %cq = quantize(%cat) : i8[1,4]{scale=0.25, zp=0}
  %out = dequantize(%cq) : f32[1,4]
  return %out
}
"""


def _fold(graph):
    """Run fold-fake-quant under VerifyEach; the result and whether the pass said it changed."""
    timing = Timing()
    with PassContext([timing], verify_each=True) as ctx:
        result = run_passes(graph, "fold-fake-quant", ctx)
    return result, timing.records[0][2], ctx


def test_concat_of_a_float_operand_leaves_no_dead_op():
    graph = parse_graph(CONCAT_WITH_FLOAT.replace("%OTHER", "%y"))
    before = print_graph(graph)
    result, changed, ctx = _fold(graph)
    assert not changed
    assert print_graph(result) == before
    assert result.copy().remove_dead() == 0
    reason = ctx.analyses.float_ops["cat"]
    assert reason == "concat: operand %y is not dequantized from an integer"


def test_concat_of_integer_operands_requantizes_the_one_that_differs():
    text = CONCAT_WITH_FLOAT.replace("%OTHER", "%yd").replace("  %cat", """  %yq = quantize(%y) : i8[1,2]{scale=0.25, zp=0}
  %yd = dequantize(%yq) : f32[1,2]
  %cat""")
    result, changed, ctx = _fold(parse_graph(text))
    assert changed
    assert [(op.kind, op.name) for op in result.ops] == [
        ("quantize", "xq"), ("quantize", "yq"), ("requantize", "xq.rq"), ("concat", "cq"), ("dequantize", "out")]
    assert ctx.analyses.float_ops == {}


# --------------------------------------------------------------------------- graph API
def _chain():
    graph = Graph()
    x = graph.add_input("x", F32)
    a = graph.add_op("relu", [x], names=["a"])
    b = graph.add_op("relu", [a.output], names=["b"])
    graph.set_outputs([b.output])
    return graph, x, a, b


def test_every_mutation_bumps_the_revision_and_no_op_mutations_do_not():
    graph, x, a, b = _chain()
    for mutate, changes in [(lambda: graph.set_attr(a, "x", 1), True), (lambda: graph.set_attr(a, "x", 1), False),
                            (lambda: graph.retype(a.output, F32), False),
                            (lambda: graph.retype(a.output, TensorType((2,), "f16")), True),
                            (lambda: graph.rename(b.output, "b"), False), (lambda: graph.rename(b.output, "c"), True),
                            (lambda: graph.replace_all_uses(x, x), False), (lambda: graph.remove_dead(), False)]:
        start = graph.revision
        mutate()
        assert (graph.revision != start) == changes


def test_replace_op_hands_the_result_name_to_the_replacement():
    graph, x, a, b = _chain()
    new = graph.add_op("sigmoid", [x], names=["s"], before=a)
    graph.replace_op(a, new)
    assert [op.name for op in graph.ops] == ["a", "b"]
    assert graph.ops[0].kind == "sigmoid" and graph.users(graph.value("a")) == [b]
    graph.replace_op(b, x, rename=False)
    assert graph.outputs == [x] and graph.users(x) == [graph.ops[0]]
    with pytest.raises(IRError, match="2 values for 1 results"):
        graph.replace_op(graph.ops[0], [x, x])


def test_retype_keeps_a_constant_s_storage():
    graph = Graph()
    c = graph.add_constant([1.0, 2.0], "c", dtype="f32")
    with pytest.raises(IRError, match="cannot retype constant"):
        graph.retype(c, TensorType((2,), "i8"))


def test_a_cycle_is_reported_with_its_values():
    graph, x, a, b = _chain()
    graph.set_input(a, 0, b.output)
    with pytest.raises(IRError, match=r"has a cycle \(%a -> relu -> %b -> relu\)"):
        graph.ops


@pytest.mark.parametrize("seed", range(30))
def test_program_order_is_the_lexicographic_topological_order_of_insertion(seed):
    """Random appends, inserts, rewirings and removals: ops and users() always come in the order a
    full lexicographic topological sort by insertion position gives (the order printed IR shows)."""
    rng = random.Random(seed)
    graph = Graph()
    values = [graph.add_input("x", F32), graph.add_input("y", F32)]
    inserted = []                                 # the ops in insertion order, as the test sees it
    for _ in range(60):
        ops = graph.ops
        step = rng.random()
        if step < 0.5 or not ops:
            before = rng.choice(ops) if ops and rng.random() < 0.5 else None
            op = graph.add_op("add", [rng.choice(values), rng.choice(values)], names=["v"], before=before)
            inserted.insert(inserted.index(before) if before else len(inserted), op)
            values.append(op.output)
        elif step < 0.8:
            op, value = rng.choice(ops), rng.choice(values)
            if value.name not in _downstream(graph, op):
                graph.set_input(op, rng.randrange(2), value)
        else:
            op = rng.choice(ops)
            if not graph.users(op.output):
                graph.remove_op(op)
                inserted.remove(op)
                values.remove(op.output)
        assert [op.name for op in graph.ops] == _reference_order(graph, inserted)
        for value in values:
            assert graph.users(value) == sorted(graph.users(value), key=graph.ops.index)


def _downstream(graph, op) -> set:
    """Names of the values that depend on `op`'s result (rewiring `op` to one would make a cycle)."""
    seen, stack = set(), [op.output]
    while stack:
        value = stack.pop()
        if value.name not in seen:
            seen.add(value.name)
            stack.extend(user.output for user in graph.users(value))
    return seen


def _reference_order(graph, inserted) -> list[str]:
    dag = nx.DiGraph()
    for op in inserted:
        dag.add_node(op.name)
        for value in op.inputs:
            dag.add_edge("%" + value.name, op.name)
        dag.add_edge(op.name, "%" + op.output.name)
    position = {op.name: i for i, op in enumerate(inserted)}
    producer = {"%" + op.output.name: position[op.name] for op in inserted}

    def key(node):
        return (position[node], 1, "") if node in position else (producer.get(node, -1), 0, node)

    return [n for n in nx.lexicographical_topological_sort(dag, key=key) if n in position]


# --------------------------------------------------------------------------- rules and driver
def _relu_rules():
    def match_double(graph, op):
        inner = graph.producer(op.inputs[0])
        if inner is None or inner.kind != "relu":
            return Failure("the operand is not a relu's result")
        return Match(inner=inner)

    def match_never(graph, op):
        raise NoMatch("never applies")

    def drop_outer(graph, op, match):
        graph.replace_op(op, match.inner.output, rename=False)

    return [Rule("never", match_never, drop_outer), Rule("double-relu", match_double, drop_outer)]


def test_apply_rules_rewrites_the_first_match_and_keeps_every_failure():
    graph, x, a, b = _chain()
    result = apply_rules(graph, _relu_rules(), anchor_kind="relu")
    assert result.changed and [op.name for op in graph.ops] == ["a"]
    assert result.failures == {a: ["never applies", "the operand is not a relu's result"]}
    again = apply_rules(graph, _relu_rules(), anchor_kind="relu")
    assert not again.changed


def test_a_match_that_changes_the_graph_is_an_error():
    graph, x, a, b = _chain()

    def sneaky(graph, op):
        graph.set_attr(op, "seen", True)
        return Failure("looked, and touched")

    with pytest.raises(IRError, match="changed the graph while matching"):
        apply_rules(graph, [Rule("sneaky", sneaky, lambda g, op, m: None)])
