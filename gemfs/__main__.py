"""`python -m gemfs` runs the command line, so a venv without scripts on PATH still works."""

from gemfs.cli import main

raise SystemExit(main())
