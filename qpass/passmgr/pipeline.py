"""Pipeline strings: `fold-batchnorm,range-analysis{method=percentile,percentile=99.99},fuse-requant`.

Grammar: passes separated by commas; each pass optionally followed by `{key=value,...}`. A value
is a bare word, a "quoted string", or a `[list,of,items]`. Printing a parsed pipeline gives back
an equivalent string.
"""

from __future__ import annotations

import re

from qpass.errors import ParseError
from qpass.passmgr.passes import REGISTRY, Pass, format_pass

_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def parse_pipeline_spec(text: str) -> list[tuple[str, dict[str, str]]]:
    """Split a pipeline string into (pass name, {option: raw value}) pairs, checking syntax only."""
    pos, out = 0, []

    def fail(message, at):
        raise ParseError(message, text, at, source="<pipeline>")

    def skip_ws():
        nonlocal pos
        while pos < len(text) and text[pos].isspace():
            pos += 1

    def name(what):
        nonlocal pos
        skip_ws()
        m = _NAME.match(text, pos)
        if not m:
            found = repr(text[pos]) if pos < len(text) else "end of pipeline"
            fail(f"expected a {what}, found {found}", pos)
        pos = m.end()
        return m.group()

    def value():
        nonlocal pos
        skip_ws()
        start = pos
        if pos < len(text) and text[pos] == '"':
            end = text.find('"', pos + 1)
            if end < 0:
                fail("unterminated quoted value", start)
            pos = end + 1
            return text[start + 1:end]
        if pos < len(text) and text[pos] == "[":
            end = text.find("]", pos)
            if end < 0:
                fail("unterminated [list] value", start)
            pos = end + 1
            return text[start:pos]
        while pos < len(text) and text[pos] not in ",{}":
            pos += 1
        raw = text[start:pos].strip()
        if not raw:
            fail("expected an option value after '='", start)
        return raw

    if not text.strip():
        fail("the pipeline is empty; give pass names separated by commas", 0)
    while True:
        pass_name = name("pass name")
        options: dict[str, str] = {}
        skip_ws()
        if pos < len(text) and text[pos] == "{":
            pos += 1
            skip_ws()
            while pos < len(text) and text[pos] != "}":
                key_at = pos
                key = name("option name")
                skip_ws()
                if pos >= len(text) or text[pos] != "=":
                    fail(f"expected '=' after option '{key}'", pos)
                pos += 1
                if key in options:
                    fail(f"option '{key}' is given twice", key_at)
                options[key] = value()
                skip_ws()
                if pos < len(text) and text[pos] == ",":
                    pos += 1
                    skip_ws()
                elif pos < len(text) and text[pos] != "}":
                    fail("expected ',' or '}' in the option list", pos)
            if pos >= len(text):
                fail(f"the option list of '{pass_name}' is not closed with '}}'", pos)
            pos += 1
        out.append((pass_name, options))
        skip_ws()
        if pos == len(text):
            return out
        if text[pos] != ",":
            fail(f"expected ',' between passes, found {text[pos]!r}", pos)
        pos += 1


def parse_pipeline(text: str) -> list[Pass]:
    """Parse a pipeline string into configured pass instances (unknown names and options are errors)."""
    return [REGISTRY.get(name).from_options(options) for name, options in parse_pipeline_spec(text)]


def format_pipeline(passes: list[Pass]) -> str:
    return ",".join(format_pass(p) for p in passes)
