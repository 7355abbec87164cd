"""The ``imloss`` command line: thin commands over the library (``imloss = imloss_cli.cli.app:app``).

Modules:
    app     the Typer app: each command parses, calls one library function and renders.
    bench   ``imloss bench``, also runnable alone as ``python -m imloss_cli.bench``.
    errors  library errors turned into one-line messages and exit codes (2: fix the input).
    views   rich rendering: training and ablation progress, run details, tables.
"""
