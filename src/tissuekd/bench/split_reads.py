"""Bytes a teacher-maps shard job reads from disk on a TissueNet-layout split: opening it (the
reader's checks) and reading its shard's images and labels, scanned as a job without a check
job before it would (`checked=False`: the finite-pixel and instance-id checks read the whole
split) and trusted to the workflow's check job (`checked=True`: segmentation_check_train read
it once). Each way runs in its own process after the file is evicted from the page cache
(posix_fadvise; a memory map still open elsewhere keeps its pages), counted by the kernel
(/proc/self/io read_bytes: Linux only), with the process's peak RSS (the mapped pages it touched
count), and the ratio is printed.

    python -m tissuekd.bench.split_reads tissuenet_v1.1_train.npz [--shards 8 --shard 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np

from tissuekd.io.segmentation import read_split
from tissuekd.segmentation.steps import shard_rows


def read_bytes() -> int:
    with open("/proc/self/io") as f:
        return int(dict(line.split(": ") for line in f.read().splitlines())["read_bytes"])


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # a file just written has dirty pages, which are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_job(path: str, checked: bool, shard: int, shards: int) -> dict:
    """Bytes read to open the split, then to read the shard's images and labels as the job does."""
    evict(path)
    start = read_bytes()
    data = read_split("tissuenet", path, checked=checked)
    opened = read_bytes() - start
    rows = shard_rows(len(data), shard, shards)
    for i in range(rows.start, rows.stop):
        np.asarray(data.images[i]).sum()
        np.asarray(data.labels[i]).sum()
    return {"opened": opened, "total": read_bytes() - start, "images": rows.stop - rows.start,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split", help="a TissueNet-layout npz (uncompressed, as published)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard", type=int, default=1)
    parser.add_argument("--one", choices=["scanned", "checked"], help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if not 0 <= args.shard < args.shards:
        parser.error(f"--shard {args.shard}: one of 0 ... {args.shards - 1} (--shards {args.shards})")
    if args.one:
        print(json.dumps(one_job(args.split, args.one == "checked", args.shard, args.shards)))
        return
    size = os.path.getsize(args.split)
    print(f"{args.split}: {size / 1e6:.0f} MB; shard {args.shard} of {args.shards}")
    totals = {}
    for way in ("scanned", "checked"):
        child = subprocess.run([sys.executable, "-m", "tissuekd.bench.split_reads", args.split, "--one", way,
                                "--shards", str(args.shards), "--shard", str(args.shard)],
                               capture_output=True, text=True)
        if child.returncode:  # the child's own reason (a bad split, not a TissueNet npz), not a bare exit status
            sys.exit(f"{way}: {child.stderr.strip().splitlines()[-1] if child.stderr.strip() else child.returncode}")
        job = json.loads(child.stdout.splitlines()[-1])
        totals[way] = job["total"]
        print(f"{way:8s} {job['opened'] / 1e6:8.0f} MB to open, {job['total'] / 1e6:8.0f} MB with its "
              f"{job['images']} images; peak RSS {job['peak_mb']:.0f} MB")
    print(f"scanned / checked: {totals['scanned'] / max(totals['checked'], 1):.1f}x the bytes read "
          "(the disk's readahead, /sys/block/*/queue/read_ahead_kb, adds to both: on a split of a few "
          "times that size the ratio says little)")


if __name__ == "__main__":
    main()
