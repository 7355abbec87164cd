"""``python -m imloss_cli.bench`` (also what the CPU memory probes run in their subprocesses)."""

from imloss_cli.cli.bench import main

raise SystemExit(main())
