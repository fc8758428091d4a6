"""Pass registry, pipeline strings, pass manager and instruments."""

import io

import pytest

from graphs import conv_relu
from qpass import Pass, PassContext, PassResult, option, parse_graph, register_pass, run_passes
from qpass.errors import ParseError, PassError
from qpass.passmgr.instruments import DumpIR, PrintAfter, Timing
from qpass.passmgr.passes import REGISTRY
from qpass.passmgr.pipeline import format_pipeline, parse_pipeline, parse_pipeline_spec


@register_pass("test-rename-relu")
class RenameRelu(Pass):
    """Replace relu by clip{min=0} (changes the IR and says so)."""

    upper: float = option(1e9, "upper clamp")

    def run(self, graph, ctx):
        changed = False
        for op in graph.find_ops("relu"):
            new = graph.add_op("clip", op.inputs, {"min": 0.0, "max": self.upper}, names=[op.name + ".clip"],
                               before=op)
            graph.replace_all_uses(op.output, new.output)
            graph.remove_op(op)
            changed = True
        return PassResult(graph, changed)


@register_pass("test-lying-pass")
class LyingPass(Pass):
    def run(self, graph, ctx):
        graph.find_ops("relu")[0].kind = "sigmoid"   # valid IR, but a change it does not report
        return PassResult(graph, False)


@register_pass("test-failing-pass")
class FailingPass(Pass):
    def run(self, graph, ctx):
        return {}["missing"]


def test_duplicate_names_are_refused():
    with pytest.raises(PassError, match="'fold-constants' is taken by"):
        @register_pass("fold-constants")
        class Other(Pass):
            def run(self, graph, ctx):
                return PassResult(graph, False)


def test_names_must_be_kebab_case():
    with pytest.raises(PassError, match="kebab-case"):
        @register_pass("Bad_Name")
        class Bad(Pass):
            pass


def test_unknown_pass_suggests_close_names():
    with pytest.raises(PassError, match="unknown pass 'fold-batchnrom'. Did you mean fold-batchnorm"):
        REGISTRY.get("fold-batchnrom")


def test_pipeline_round_trip():
    text = "fold-constants{fold-quant=true,max-elements=10},test-rename-relu{upper=6.0},eliminate-dead-code"
    passes = parse_pipeline(text)
    assert [p.name for p in passes] == ["fold-constants", "test-rename-relu", "eliminate-dead-code"]
    assert passes[0].max_elements == 10 and passes[0].fold_quant is True and passes[1].upper == 6.0
    assert format_pipeline(passes) == text
    assert format_pipeline(parse_pipeline(format_pipeline(passes))) == text


def test_pipeline_values_lists_and_quotes():
    spec = parse_pipeline_spec('a{keep=[x.*,y],name="a b"} , b')
    assert spec == [("a", {"keep": "[x.*,y]", "name": "a b"}), ("b", {})]


@pytest.mark.parametrize("text, column, message", [
    ("a,,b", 3, "expected a pass name"),
    ("a{x}", 4, "expected '=' after option 'x'"),
    ("a{x=1", 6, "not closed"),
    ("a b", 3, "expected ',' between passes"),
    ("", 1, "the pipeline is empty"),
    ("a{x=1,x=2}", 7, "option 'x' is given twice"),
])
def test_bad_pipeline_strings(text, column, message):
    with pytest.raises(ParseError, match=message) as info:
        parse_pipeline_spec(text)
    assert info.value.column == column


def test_bad_option_values():
    with pytest.raises(PassError, match="option max-elements='ten' is not a valid int"):
        parse_pipeline("fold-constants{max-elements=ten}")
    with pytest.raises(PassError, match="no option 'max-element'. Did you mean max-elements"):
        parse_pipeline("fold-constants{max-element=1}")


def test_dump_ir_writes_numbered_files_only_when_changed(tmp_path):
    with PassContext([DumpIR(tmp_path)]) as ctx:
        run_passes(conv_relu(), "eliminate-dead-code,test-rename-relu,eliminate-identity", ctx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00-input.qir", "02-test-rename-relu.diff",
                                                          "02-test-rename-relu.qir", "index.html"]
    diff = (tmp_path / "02-test-rename-relu.diff").read_text()
    assert "-  %relu = relu(%conv)" in diff and "+  %relu.clip = clip(%conv)" in diff
    parse_graph((tmp_path / "02-test-rename-relu.qir").read_text()).verify()


def test_print_after_and_timing():
    stream, timing = io.StringIO(), Timing()
    with PassContext([PrintAfter({"test-rename-relu"}, stream), timing]) as ctx:
        run_passes(conv_relu(), "eliminate-dead-code,test-rename-relu", ctx)
    text = stream.getvalue()
    assert text.count("// ----- IR after") == 1 and "IR after test-rename-relu (changed)" in text
    report = timing.report()
    assert "eliminate-dead-code" in report and "test-rename-relu" in report and "total" in report


def test_verify_each_catches_a_pass_that_lies_about_changes():
    with PassContext(verify_each=True) as ctx:
        with pytest.raises(PassError, match="'test-lying-pass' .* reported changed=False but changed the IR"):
            run_passes(conv_relu(), "test-lying-pass", ctx)


def test_pass_errors_name_the_pass_and_step():
    with pytest.raises(PassError, match=r"internal error in pass 'test-failing-pass' \(step 2 of 2\)"):
        run_passes(conv_relu(), "eliminate-dead-code,test-failing-pass")


def test_changed_flag_and_semantics():
    g = conv_relu()
    result = RenameRelu().run(g, PassContext())
    assert result.changed and not g.find_ops("relu") and g.find_ops("clip")
    assert not RenameRelu().run(g, PassContext()).changed
