"""What a person uses: the command line, the IR viewer, reports, the debugger and the demo."""
