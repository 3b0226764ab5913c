#!/usr/bin/env python3
"""Snapshot latency under load (issue 17; ../shared/BENCH.md; docs/performance.md "Snapshots under
load"): how long `shale snapshot create` takes on a fully mapped volume, idle and while 4 KiB random
writes run at QD 32, and what a snapshot does to those writes' latency, against the raw disk in
the same run.

For each --sizes entry: one shaled (its own data dir, a sparse pool file), a volume of that size
fully mapped (written end to end; with --sparse-from SIZE, volumes that large get one 4 KiB write
per 64 KiB cluster instead: every cluster mapped, which is what a freeze's cost depends on, with
1/16 of the bytes — this disk cannot hold 64 GiB written several times over), then
  1. idle: --snapshots snapshots one after another;
  2. under load: fio (--ioengine=nbd over the daemon's NBD UNIX socket) 4 KiB random writes at
     QD 32 for --runtime seconds with a per-I/O latency log, and --snapshots snapshots spread over
     the run (the first after 1 s);
  3. unflushed: --snapshots times, a sequential write of --unflushed bytes (at most the volume)
     without any flush, then a snapshot right after it;
  4. raw: the same fio job as 2 with --ioengine=io_uring --direct=1 on a file of the same size on
     the same disk (BENCH.md's limit), without snapshots.
Per snapshot: the CLI round trip (process start and gRPC included), the daemon's reply time
(`freeze_ms` of its "snapshot created" log line: from the request reaching the snapshot manager
to the cut, which is when it answers) and the time until it is durable (`durable_ms` of "snapshot
durable"). For the writes: the p99 of the writes completing within 0.5 s of each snapshot's start
against the p99 of the writes completing at least 1 s away from every snapshot, and the raw
disk's p99.

    bench/snapshot_bench.py [--build-dir build] [--sizes 1G,16G,64G] [--sparse-from 32G]
                            [--runtime 20] [--snapshots 8] [--unflushed 4G] [--dir DIR]
                            [--json FILE]
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbd_bench import parse_size  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREEZE = re.compile(r'msg="snapshot created" snapshot=(\S+) .*freeze_ms=([0-9.]+)')
DURABLE = re.compile(r'msg="snapshot durable" snapshot=(\S+) .*durable_ms=([0-9.]+)')


def die(message):
    sys.exit(f"snapshot_bench: {message}")


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


class Daemon:
    def __init__(self, build, work, pool_bytes):
        self.bin = os.path.join(os.path.abspath(build), "bin")
        self.work = work
        self.log = os.path.join(work, "shaled.log")
        self.proc = subprocess.Popen(
            [f"{self.bin}/shaled", "--data-dir", work, "--default-pool-size", str(pool_bytes),
             "--metrics-listen", "none", "--log-file", self.log],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while self.shale(["status"], check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                die("shaled did not start: " + open(self.log).read()[-2000:])
            time.sleep(0.05)

    def shale(self, args, check=True):
        p = subprocess.run([f"{self.bin}/shale", "--endpoint",
                            f"unix://{self.work}/shaled.sock"] + args,
                           capture_output=True, text=True, timeout=600)
        if check and p.returncode != 0:
            die(f"shale {' '.join(args)}: {p.stderr.strip()}")
        return p

    def nbd(self, volume):
        return ["--ioengine=nbd", f"--uri=nbd+unix:///{volume}?socket={self.work}/nbd.sock"]

    def logged_ms(self, pattern, ref, wait=0.0):
        """The figure `pattern` logs for `ref`, polling up to `wait` seconds for the line."""
        deadline = time.monotonic() + wait
        while True:
            for line in reversed(open(self.log).read().splitlines()):
                m = pattern.search(line)
                if m and m.group(1) == ref:
                    return float(m.group(2))
            if time.monotonic() >= deadline:
                return float("nan")
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def snapshot(d, volume, name):
    """Takes volume@name; returns (CLI round trip ms, daemon reply ms, start time)."""
    t0 = time.monotonic()
    d.shale(["snapshot", "create", f"{volume}@{name}"])
    return (time.monotonic() - t0) * 1000, d.logged_ms(FREEZE, f"{volume}@{name}"), t0


def durable_ms(d, volume, names):
    return [d.logged_ms(DURABLE, f"{volume}@{n}", wait=60) for n in names]


def drop(d, volume, names):
    """Deletes a phase's snapshots (they merge away) so the next phase starts with a short chain
    (a volume holds at most 127 snapshots in its chain)."""
    for n in names:
        d.shale(["snapshot", "delete", f"{volume}@{n}"])


def unflushed(d, args, size):
    """Snapshots right after a large sequential write that nothing flushed."""
    chunk = min(size, args.unflushed)
    out = []
    for i in range(args.snapshots):
        offset = (i * chunk) % size if size > chunk else 0
        p = subprocess.run(["fio", "--name=seq", "--rw=write", "--bs=1M", "--iodepth=8",
                            f"--offset={offset}", f"--size={chunk}", "--end_fsync=0",
                            "--output-format=json"] + d.nbd("v"), capture_output=True, text=True)
        if p.returncode != 0:
            die(f"fio (unflushed write) failed: {p.stderr.strip()[-1000:]}")
        out.append(snapshot(d, "v", f"unflushed{i}")[:2])
    return out


def fio_with_log(target, size, runtime, log_prefix):
    cmd = ["fio", "--output-format=json", "--name=load", "--rw=randwrite", "--bs=4k",
           "--iodepth=32", f"--size={size}", "--time_based", f"--runtime={runtime}",
           "--norandommap", "--randrepeat=0", f"--write_lat_log={log_prefix}",
           "--log_avg_msec=0"] + target
    return subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def completions(log_prefix):
    """(completion time in s since fio's start, latency in ms) of every write."""
    out = []
    with open(f"{log_prefix}_clat.1.log") as f:
        for line in f:
            t, ns = line.split(",")[:2]
            out.append((int(t) / 1000.0, int(ns) / 1e6))
    return out


def loaded(d, args, size, work):
    prefix = os.path.join(work, "lat")
    fio = fio_with_log(d.nbd("v"), size, args.runtime, prefix)
    fio_start = time.monotonic()
    time.sleep(1)  # fio connects and ramps up (bounded: the run is --runtime long)
    gap = max(0.5, (args.runtime - 2) / args.snapshots)
    snaps = []
    for i in range(args.snapshots):
        ms, freeze, t0 = snapshot(d, "v", f"load{i}")
        snaps.append((ms, freeze, t0 - fio_start))
        wait = fio_start + 1 + (i + 1) * gap - time.monotonic()
        if wait > 0 and i + 1 < args.snapshots:
            time.sleep(wait)
    out, err = fio.communicate(timeout=args.runtime + 120)
    if fio.returncode != 0:
        die(f"fio failed: {err}")
    lat = completions(prefix)
    # fio's clock starts a little after the process: align on the first completion at worst.
    near, far = [], []
    for t, ms in lat:
        d_min = min(abs(t - s[2]) for s in snaps)
        if d_min <= 0.5:
            near.append(ms)
        elif d_min >= 1.0:
            far.append(ms)
    return snaps, pct(near, 0.99), pct(far, 0.99), len(near), len(far)


def raw(args, size, work):
    # A file this size must fit the disk: the raw disk's 4 KiB p99 does not depend on it.
    size = min(size, args.sparse_from)
    path = os.path.join(work, "raw.img")
    subprocess.run(["fio", "--name=fill", f"--filename={path}", f"--size={size}", "--rw=write",
                    "--bs=1M", "--iodepth=8", "--ioengine=io_uring", "--direct=1",
                    "--output-format=json"], check=True, capture_output=True)
    prefix = os.path.join(work, "raw")
    fio = fio_with_log(["--ioengine=io_uring", "--direct=1", f"--filename={path}"], size,
                       args.runtime, prefix)
    fio.communicate(timeout=args.runtime + 120)
    lat = [ms for _, ms in completions(prefix)]
    os.unlink(path)
    return pct(lat, 0.99)


def one_size(args, size):
    work = tempfile.mkdtemp(prefix="shale-snap-bench-", dir=args.dir)
    d = None
    try:
        # Sparse (only written blocks take disk space): after each snapshot a rewrite takes new
        # clusters, and each 4 KiB random write after a snapshot a whole new cluster.
        d = Daemon(args.build_dir, work, size * (2 * args.snapshots + 3) + (128 << 30))
        d.shale(["volume", "create", "v", "--size", str(size)])
        sparse = size >= args.sparse_from
        print(f"# {size >> 30} GiB: mapping every cluster"
              f"{' (one 4 KiB write per cluster)' if sparse else ' (written end to end)'}",
              flush=True)
        fill = (["--rw=write:60k", "--bs=4k", "--iodepth=32"] if sparse
                else ["--rw=write", "--bs=1M", "--iodepth=8"])
        subprocess.run(["fio", "--name=fill"] + fill + [f"--size={size}", "--end_fsync=1",
                                                        "--output-format=json"] + d.nbd("v"),
                       check=True, capture_output=True)
        idle = [snapshot(d, "v", f"idle{i}")[:2] for i in range(args.snapshots)]
        idle_durable = durable_ms(d, "v", [f"idle{i}" for i in range(args.snapshots)])
        drop(d, "v", [f"idle{i}" for i in range(args.snapshots)])
        snaps, near, far, n_near, n_far = loaded(d, args, size, work)
        load_durable = durable_ms(d, "v", [f"load{i}" for i in range(args.snapshots)])
        drop(d, "v", [f"load{i}" for i in range(args.snapshots)])
        unfl = unflushed(d, args, size)
        unfl_durable = durable_ms(d, "v", [f"unflushed{i}" for i in range(args.snapshots)])
        d.stop()
        d = None
        for entry in os.listdir(work):  # the pool's space back before the raw file takes its own
            path = os.path.join(work, entry)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif entry != "shaled.log":
                os.unlink(path)
        raw_p99 = raw(args, size, work)
        row = dict(size=size, sparse=sparse, idle_cli_ms=[x[0] for x in idle],
                   idle_freeze_ms=[x[1] for x in idle], idle_durable_ms=idle_durable,
                   load_cli_ms=[x[0] for x in snaps], load_freeze_ms=[x[1] for x in snaps],
                   load_durable_ms=load_durable, unflushed_cli_ms=[x[0] for x in unfl],
                   unflushed_freeze_ms=[x[1] for x in unfl], unflushed_durable_ms=unfl_durable,
                   write_p99_near_ms=near, write_p99_far_ms=far, writes_near=n_near,
                   writes_far=n_far, raw_p99_ms=raw_p99)
        print(f"# {json.dumps(row)}", flush=True)
        return row
    finally:
        if d is not None:
            d.stop()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--sizes", default="1G,16G,64G")
    ap.add_argument("--sparse-from", default="32G",
                    help="volumes this large are mapped with one 4 KiB write per cluster")
    ap.add_argument("--unflushed", default="4G",
                    help="bytes written sequentially without a flush before each snapshot of "
                         "phase 3")
    ap.add_argument("--runtime", type=int, default=20, help="seconds of the loaded run")
    ap.add_argument("--snapshots", type=int, default=8,
                    help="snapshots per phase (at most 126: each phase's are deleted after it)")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not 1 <= args.snapshots <= 126:
        ap.error("--snapshots: 1 to 126 (a volume's chain holds at most 127 snapshots)")
    if shutil.which("fio") is None:
        die("fio is missing: run scripts/deps")
    args.sparse_from = parse_size(args.sparse_from)
    args.unflushed = parse_size(args.unflushed)
    rows = [one_size(args, parse_size(s)) for s in args.sizes.split(",")]
    print("\n| volume | phase | daemon reply p50 / p99 / max ms | CLI p50 / p99 / max ms "
          "| durable p50 / p99 / max ms |")
    print("|---|---|---|---|---|")

    def pm(values):
        values = [v for v in values if v == v]  # drop NaN (a line not found)
        if not values:
            return "-"
        return f"{pct(values, 0.5):.1f} / {pct(values, 0.99):.1f} / {max(values):.1f}"
    for r in rows:
        name = f"{r['size'] >> 30} GiB" + (" (sparse)" if r["sparse"] else "")
        for phase, durable in (("idle", "idle_durable_ms"), ("load", "load_durable_ms"),
                               ("unflushed", "unflushed_durable_ms")):
            print(f"| {name} | {phase} | {pm(r[phase + '_freeze_ms'])} | "
                  f"{pm(r[phase + '_cli_ms'])} | {pm(r[durable]) if durable else '-'} |")
    print("\n| volume | write p99 near a snapshot / away (ms) | ratio | raw disk p99 ms |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['size'] >> 30} GiB | {r['write_p99_near_ms']:.2f} / "
              f"{r['write_p99_far_ms']:.2f} | {r['write_p99_near_ms'] / r['write_p99_far_ms']:.2f}x"
              f" | {r['raw_p99_ms']:.2f} |")
    print(f"\n({args.snapshots} snapshots per phase, so max is the p{100 - 100 // args.snapshots}"
          " or worse; writes near a snapshot: completing within 0.5 s of its start; away: at least"
          " 1 s from every snapshot)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
