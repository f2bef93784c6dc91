"""``--shard K/N`` for benchmarks that split one run between processes side by side (one per core)."""

from __future__ import annotations

import argparse


def shard_arg(text: str) -> tuple[int, int]:
    """``K/N`` as (K, N), for argparse's ``type=``: a bad value is one usage line and exit 2."""
    try:
        shard, shards = map(int, text.split("/"))
    except ValueError:
        shard, shards = -1, 0
    if not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"{text!r}: give K/N with 0 <= K < N, e.g. 0/2")
    return shard, shards
