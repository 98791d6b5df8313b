"""Command-line entry points: each a thin ``main`` over the packages, importing no other
script (``python scripts/<name>.py --help``)."""
