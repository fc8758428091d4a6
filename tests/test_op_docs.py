"""docs/ops.md is generated from the op definitions and must be current."""

from pathlib import Path

from qpass.ir.opdef import OPS, Trait
from qpass.tools.cli import main
from qpass.tools.opdocs import TRAIT_MEANINGS, ops_markdown

PAGE = Path(__file__).parent.parent / "docs" / "ops.md"


def test_docs_ops_md_is_generated_from_the_definitions():
    assert PAGE.read_text() == ops_markdown(), "regenerate it: qpass ops --markdown > docs/ops.md"


def test_every_builtin_op_and_trait_is_documented():
    page = ops_markdown()
    assert all(f"| `{d.name}`" in page for d in OPS.definitions() if d.builtin)
    assert set(TRAIT_MEANINGS) == set(Trait)


def test_qpass_ops_lists_the_ops(capsys):
    assert main(["ops"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("qconv2d ") and "has-requantize-epilogue" in line for line in lines)
