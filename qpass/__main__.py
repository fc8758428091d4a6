from qpass.tools.cli import main

raise SystemExit(main())
