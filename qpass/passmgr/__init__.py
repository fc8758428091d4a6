"""Pass infrastructure: the `Pass` base and registry, pipelines as text, the pass manager and its
instruments (printing, dumps, timing, verification)."""
