"""`python -m minigpt ...` is the same as the `minigpt` command."""
from minigpt.cli import main

raise SystemExit(main())
