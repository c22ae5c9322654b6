"""Benchmark placeholder (see issue 5)."""


def add_arguments(p):
    pass


def main(args):
    raise SystemExit("bench: not built yet")
