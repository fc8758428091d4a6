"""eliminate-dead-code: remove ops and constants that no graph output depends on."""

from qpass import Pass, PassResult, register_pass


@register_pass
class EliminateDeadCode(Pass):
    """Remove everything the graph outputs do not depend on."""

    name = "eliminate-dead-code"

    def run(self, graph, ctx):
        return PassResult(graph, graph.remove_dead() > 0)
