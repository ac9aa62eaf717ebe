"""What the connection pool's pre-ping costs: a checkout plus one `SELECT 1`, with and without it.

    .venv/bin/python bench/db_checkout.py [--postgres URL] [--rounds 5] [--checkouts 2000]

Uses the engine the service builds (neffcache.db.session.make_engine) and a copy of it with
pre-ping off, alternating which goes first each round; touches no table. Prints microseconds per
checkout and the ratio. The decision it informs is written where the engine is made.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from neffcache.db.session import make_engine, normalise_url


def per_checkout_us(engine: Engine, checkouts: int) -> float:
    with engine.connect() as conn:  # the pool's first connection, made outside the timing
        conn.execute(text("SELECT 1"))
    started = time.perf_counter()
    for _ in range(checkouts):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar()
    return (time.perf_counter() - started) / checkouts * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checkouts", type=int, default=2000)
    args = parser.parse_args()
    measured: dict[str, list[float]] = {"pre-ping (the service's engine)": [], "no pre-ping": []}
    for r in range(args.rounds):
        order = list(measured)
        if r % 2:
            order.reverse()
        for name in order:
            engine = (make_engine(args.postgres) if name.startswith("pre-ping")
                      else create_engine(normalise_url(args.postgres), pool_pre_ping=False, pool_size=5))
            measured[name].append(per_checkout_us(engine, args.checkouts))
            engine.dispose()
    for name, runs in measured.items():
        print(f"{name:<32} {min(runs):7.0f} / {statistics.median(runs):7.0f} / {max(runs):7.0f} us per checkout "
              "(min / median / max)")
    with_ping, without = measured.values()
    ratios = sorted(w / o for w, o in zip(with_ping, without, strict=True))
    print(f"pre-ping / no pre-ping: {ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f}; "
          f"pre-ping adds {statistics.median(with_ping) - statistics.median(without):.0f} us per checkout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
