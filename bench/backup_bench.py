#!/usr/bin/env python3
"""Backup benchmark: shale backup/restore against s3cmd put/get of the same bytes, to the same
S3 server, in one run (../../shared/BENCH.md: ratios, not absolute figures).

One s3rver (tests/tools, installed by scripts/deps) on loopback and one shaled. A volume of
--size is filled with --data (random: incompressible; dataset: half zeros, half text-like
bytes), snapshotted, and then, --reps times in turn:
  backup    shale backup create --full of the snapshot into a fresh prefix     (s3rver empty)
  s3cmd put the same bytes as one file, s3cmd put (multipart, its defaults)
  restore   shale backup restore into a new volume (includes the digest read-back)
  s3cmd get that object into a file
Throughput = volume bytes / wall time. The table shows the medians and the median of the
per-repetition ratios shale/s3cmd. Then the incremental figure: 1 % of the volume rewritten
(scattered 256 KiB writes), snapshot, backup: bytes sent against the changed chunks' compressed
size plus the manifest, and its time against the full backup's.

    bench/backup_bench.py [--build-dir build] [--size 512M] [--reps 3] [--data random|dataset]
                          [--parallel 4] [--dir DIR] [--json FILE]
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 4 << 20
BUCKET = "bench"


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def run(argv, env=None, check=True, timeout=3600):
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        sys.exit(f"backup_bench: {' '.join(argv[:4])}... failed ({p.returncode}): {p.stderr.strip()}")
    return p


def timed(argv, env=None):
    t0 = time.monotonic()
    p = run(argv, env=env)
    return time.monotonic() - t0, p


def wait_for(cond, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    sys.exit(f"backup_bench: {what} did not happen within {timeout}s")


def make_data(path, size, kind, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 1 << 20)
            if kind == "random":
                f.write(rng.randbytes(n))
            else:  # dataset-like: a zero half-MiB, then text-like bytes (compress ~3x)
                words = [b"%d,%0.6f,sample-%d\n" % (rng.randrange(10**6), rng.random(), i)
                         for i in range(n // 64)]
                text = b"".join(words)[: n // 2]
                f.write(bytes(n - len(text)) + text)
            left -= n


class Rig:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.bin = os.path.join(os.path.abspath(args.build_dir), "bin")
        self.procs = []
        s3rver = os.path.join(ROOT, "tests/tools/node_modules/.bin/s3rver")
        if not os.access(s3rver, os.X_OK):
            sys.exit("backup_bench: s3rver is missing: run scripts/deps")
        os.makedirs(f"{work}/s3")
        log = open(f"{work}/s3rver.log", "w")
        p = subprocess.Popen([s3rver, "-d", f"{work}/s3", "-a", "127.0.0.1", "-p", "0",
                              "--configure-bucket", BUCKET], stdout=log, stderr=log)
        self.procs.append(p)
        port = wait_for(lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)",
                                          open(f"{work}/s3rver.log").read()), "s3rver start")
        self.url = f"http://127.0.0.1:{port.group(1)}"
        self.cfg = f"{work}/s3cfg"
        with open(self.cfg, "w") as f:
            f.write(f"[default]\naccess_key = S3RVER\nsecret_key = S3RVER\n"
                    f"host_base = 127.0.0.1:{port.group(1)}\nhost_bucket = 127.0.0.1:{port.group(1)}\n"
                    "use_https = False\nsignature_v2 = False\n")
        self.env = dict(os.environ, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
        self.env.pop("SHALE_ENDPOINT", None)
        pool = max(2 << 30, args.size * (2 * args.reps + 4))
        d = subprocess.Popen([f"{self.bin}/shaled", "--data-dir", f"{work}/data",
                              "--default-pool-size", str(pool), "--nbd-listen", "127.0.0.1:0", "--nbd-insecure-tcp", "--metrics-listen", "none",
                              "--backup-endpoint", self.url, "--backup-parallel",
                              str(args.parallel), "--log-file", f"{work}/shaled.log"],
                             env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(d)
        self.ctl = f"unix://{work}/data/shaled.sock"
        wait_for(lambda: run(self.shale_argv(["status"]), self.env, check=False).returncode == 0,
                 "shaled start")
        st = json.loads(run(self.shale_argv(["status", "-o", "json"]), self.env).stdout)
        self.nbd = st["nbd"]["tcp_address"]

    def shale_argv(self, args):
        return [f"{self.bin}/shale", "--endpoint", self.ctl, "--timeout", "3600"] + args

    def shale(self, args):
        return json.loads(run(self.shale_argv(args + ["-o", "json"]), self.env).stdout)

    def s3cmd(self, args):
        return ["s3cmd", "-c", self.cfg, "--no-progress"] + args

    def close(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def fill(rig, volume, path):
    run(["nbdcopy", path, f"nbd://{rig.nbd}/{volume}"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--size", default="512M")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", choices=["random", "dataset"], default="random")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.size = parse_size(args.size)
    for tool in ("s3cmd", "nbdcopy"):
        if shutil.which(tool) is None:
            sys.exit(f"backup_bench: {tool} is missing: run scripts/deps")
    work = tempfile.mkdtemp(prefix="shale-backup-bench-", dir=args.dir)
    rig = None
    try:
        rig = Rig(args, work)
        data = f"{work}/data.raw"
        make_data(data, args.size, args.data, 1)
        rig.shale(["volume", "create", "src", "--size", str(args.size)])
        fill(rig, "src", data)
        run(rig.shale_argv(["snapshot", "create", "src", "s1", "--wait-digest"]), rig.env)
        rows = []
        mib = args.size / (1 << 20)
        for rep in range(args.reps):
            place = f"s3://{BUCKET}/rep{rep}"
            t_backup, p = timed(rig.shale_argv(["backup", "create", "src@s1", "--to", place,
                                                "--full", "-o", "json"]), rig.env)
            backup = json.loads(p.stdout)
            t_put, _ = timed(rig.s3cmd(["put", data, f"s3://{BUCKET}/raw{rep}/data.raw"]))
            t_restore, _ = timed(rig.shale_argv(["backup", "restore", backup["url"],
                                                 f"r{rep}", "-o", "json"]), rig.env)
            out = f"{work}/get.raw"
            t_get, _ = timed(rig.s3cmd(["get", "--force", f"s3://{BUCKET}/raw{rep}/data.raw", out]))
            os.unlink(out)
            rows.append(dict(backup=mib / t_backup, put=mib / t_put, restore=mib / t_restore,
                             get=mib / t_get, stored=backup["stored_bytes"]))
            run(rig.shale_argv(["volume", "delete", f"r{rep}"]), rig.env)
            print(f"rep {rep + 1}: backup {mib / t_backup:.1f} MiB/s, s3cmd put {mib / t_put:.1f}, "
                  f"restore {mib / t_restore:.1f}, s3cmd get {mib / t_get:.1f}", file=sys.stderr)

        # Incremental: 1 % rewritten in scattered 256 KiB pieces, one per chunk.
        base = rig.shale(["backup", "create", "src@s1", "--to", f"s3://{BUCKET}/inc"])
        t_full = None
        writes = max(1, args.size // 100 // (256 << 10))
        chunks = random.Random(2).sample(range(args.size // CHUNK), min(writes, args.size // CHUNK))
        for i, c in enumerate(chunks):
            piece = f"{work}/piece"
            make_data(piece, 256 << 10, "random", 100 + i)
            run(["qemu-io", "-f", "raw", f"nbd://{rig.nbd}/src", "-c",
                 f"write -s {piece} {c * CHUNK + (1 << 20)} {256 << 10}", "-c", "flush"])
        run(rig.shale_argv(["snapshot", "create", "src", "s2", "--wait-digest"]), rig.env)
        t_inc, p = timed(rig.shale_argv(["backup", "create", "src@s2", "--to",
                                         f"s3://{BUCKET}/inc", "-o", "json"]), rig.env)
        inc = json.loads(p.stdout)
        manifest = f"{work}/m"
        run(rig.s3cmd(["get", "--force", f"s3://{BUCKET}/inc/backups/{inc['id']}.manifest", manifest]))
        run(rig.s3cmd(["get", "--force", f"s3://{BUCKET}/inc/backups/{base['id']}.manifest", manifest + ".base"]))
        def lines(path):
            with open(path) as f:
                return {int(l.split()[0]): (l.split()[1], int(l.split()[2]))
                        for l in f.read().split("\n")[1:] if l}
        old, new = lines(manifest + ".base"), lines(manifest)
        changed = sum(s for i, (h, s) in new.items() if old.get(i, ("", 0))[0] != h)
        mbytes = os.path.getsize(manifest)
        t_full = statistics.median([mib / r["backup"] for r in rows])

        med = lambda k: statistics.median(r[k] for r in rows)
        ratio = lambda a, b: statistics.median(r[a] / r[b] for r in rows)
        result = dict(size=args.size, data=args.data, reps=args.reps, parallel=args.parallel,
                      backup_mib_s=med("backup"), s3cmd_put_mib_s=med("put"),
                      backup_vs_put=ratio("backup", "put"), restore_mib_s=med("restore"),
                      s3cmd_get_mib_s=med("get"), restore_vs_get=ratio("restore", "get"),
                      stored_bytes=rows[0]["stored"], inc_changed_chunks=len(chunks),
                      inc_bytes_sent=inc["bytes_sent"], inc_changed_compressed=changed,
                      inc_manifest_bytes=mbytes,
                      inc_sent_ratio=inc["bytes_sent"] / (changed + mbytes),
                      inc_time_s=t_inc, full_time_s=t_full)
        print(f"\nbackup benchmark: {args.size >> 20} MiB of {args.data} data, {args.reps} reps, "
              f"{args.parallel} transfers in flight, s3rver on loopback")
        print(f"{'':24}{'shale MiB/s':>12}{'s3cmd MiB/s':>13}{'ratio':>8}")
        print(f"{'backup vs s3cmd put':24}{result['backup_mib_s']:12.1f}{result['s3cmd_put_mib_s']:13.1f}"
              f"{result['backup_vs_put']:8.2f}")
        print(f"{'restore vs s3cmd get':24}{result['restore_mib_s']:12.1f}{result['s3cmd_get_mib_s']:13.1f}"
              f"{result['restore_vs_get']:8.2f}")
        print(f"stored {result['stored_bytes'] >> 20} MiB for {args.size >> 20} MiB")
        print(f"incremental after 1 % ({len(chunks)} chunks changed): sent {inc['bytes_sent']} bytes"
              f" = {result['inc_sent_ratio']:.3f} x (changed chunks {changed} + manifest {mbytes});"
              f" {t_inc:.2f} s vs {t_full:.2f} s for the full backup")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        if rig:
            rig.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
