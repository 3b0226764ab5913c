#!/usr/bin/env python3
"""Replication benchmark (issue 11; ../shared/BENCH.md "More than one node"): ratios in one run.

One etcd and three shaled daemons (node-a, node-b, node-c) on this machine, replica traffic over
loopback. On node-a (the target of every volume): v1 (1 replica), v2 (2 replicas: a, b) and v3
(3 replicas), each of --size and preconditioned (written end to end through NBD). Then:

  1. Write path: fio (--ioengine=nbd over node-a's NBD UNIX socket) runs 4 KiB random writes at
     QD 32 and 1 MiB sequential writes at QD 8 on v1, v2, v3 in turn, --reps times; IOPS, p99 and
     the median of the per-repetition ratios v2/v1 and v3/v1. The CPU each process used during
     the runs (shaled a, b, c from /proc/PID/stat; fio's job from its own report) says which ran
     out first, and the mean latency of each replica's writes (node-a's
     shale_replica_write_latency_seconds: the local engine write, a remote round trip) which
     replica the writes waited for.
  2. Rebuild vs nbdcopy: node-b is killed (-9), all of v2 is rewritten with fresh data while it
     is out, node-b is restarted and node-a rebuilds its replica (every 4 KiB block differs). Its
     throughput (bytes rebuilt / time from the first progress seen to the rebuild's end, polled
     every 50 ms through `shale replica list`) against `nbdcopy` of the same bytes from node-a's
     v2 to a plain volume on node-b.
  4. (--only diskless) A target on a node without a replica (issue 12): v2 (replicas on node-a
     and node-b) served by node-a (its local replica) and by node-c (no replica: every read and
     write crosses loopback), attached back and forth; 4 KiB random reads and writes at QD 32,
     1 MiB sequential reads and writes at QD 8, --reps times; the median ratio node-c/node-a.
  3. Client p99 during a rebuild: fio 4 KiB random writes at QD 8 on v2 for --probe seconds (at
     most 60 % of the idle rebuild's time, so the probe ends before the rebuild does), with
     no rebuild, during an uncapped rebuild, and during a rebuild capped by node-a's rebuild
     cap (--cap, default a quarter of the uncapped rebuild's throughput; set live with
     `shale qos rebuild-bps`).

    bench/replication_bench.py [--build-dir build] [--size 1G] [--runtime 5] [--reps 3]
                               [--probe 3] [--cap BYTES/S]
                               [--only write|rebuild|rebuild-latency|diskless]
                               [--dir DIR] [--replica-pools-in-memory]
                               [--json FILE]

--replica-pools-in-memory puts node-b's and node-c's pools on /dev/shm (tmpfs, which takes
O_DIRECT on Linux 6.6+) while node-a's (the target, and the 1-replica baseline) stays on the disk:
a model of a disk per node in which the replicas' disks cost nothing, so that the ratios show what
the replication path itself costs, without the one shared disk taking every byte N times. A
model, not a deployment: the real figure lies between it and the shared-disk one.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbd_bench import fio, fio_sample, free_port, parse_size  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODES = ["node-a", "node-b", "node-c"]
WORKLOADS = {
    "randwrite": dict(label="randwrite 4k qd32", rw="randwrite", bs="4k", iodepth=32),
    "write": dict(label="write 1M qd8", rw="write", bs="1M", iodepth=8),
}
TICK = os.sysconf("SC_CLK_TCK")


def die(message):
    sys.exit(f"replication_bench: {message}")


def wait_for(cond, what, timeout=60, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    die(f"{what} did not happen within {timeout}s")


def cpu_seconds(pid):
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


class Cluster:
    """etcd + three shaled; node processes can be killed and restarted."""

    def __init__(self, args, work):
        self.args, self.work = args, work
        self.bin = os.path.join(os.path.abspath(args.build_dir), "bin")
        self.procs, self.flags = {}, {}
        self.etcd = None
        secret = f"{work}/cluster.secret"
        with open(secret, "w") as f:
            f.write("replication-bench-secret-0123456789abcdef\n")
        os.chmod(secret, 0o600)
        try:
            self.start_all(args, work, secret)
        except BaseException:
            self.close()  # what started before the failure stops too (die() raises SystemExit)
            raise

    def start_all(self, args, work, secret):
        self.start_etcd()
        pool = args.size * 5 + (1 << 30)
        self.roots = {}  # node -> the directory holding its data directory
        self.metrics = f"127.0.0.1:{free_port()}"  # node-a's, the target's
        for node in NODES:
            root = args.shm if args.shm is not None and node != "node-a" else work
            self.roots[node] = root
            self.flags[node] = [
                "--data-dir", f"{root}/{node}", "--default-pool-size", str(pool),
                "--metrics-listen", self.metrics if node == "node-a" else "none",
                "--log-file", f"{work}/{node}.log",
                "--cluster-store", f"etcd://127.0.0.1:{self.etcd_port}", "--node-name", node,
                "--cluster-secret-file", secret, "--node-lease-seconds", "3",
                "--replica-listen", "127.0.0.1:0"]
            self.start(node)
        wait_for(self.all_published, "three nodes up with replica addresses", 30)

    def start_etcd(self):
        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        self.etcd_port, peer = free_port(), free_port()
        client = f"http://127.0.0.1:{self.etcd_port}"
        log = open(f"{self.work}/etcd.log", "w")
        self.etcd = subprocess.Popen(
            [etcd, "--name=bench", f"--data-dir={self.work}/etcd", f"--listen-client-urls={client}",
             f"--advertise-client-urls={client}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
             f"--initial-cluster=bench=http://127.0.0.1:{peer}", "--initial-cluster-state=new"],
            stdout=log, stderr=log)

        def healthy():
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as r:
                    return b'"true"' in r.read()
            except OSError:
                return False
        wait_for(healthy, "etcd healthy", 30, 0.1)

    def start(self, node, extra=()):
        self.procs[node] = subprocess.Popen([f"{self.bin}/shaled"] + self.flags[node] + list(extra),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.shale(node, ["status"], check=False).returncode == 0,
                 f"{node} start", 30)

    def kill(self, node):
        self.procs[node].kill()
        self.procs[node].wait()

    def stop(self, node):
        self.procs[node].send_signal(signal.SIGTERM)
        try:
            self.procs[node].wait(30)
        except subprocess.TimeoutExpired:
            self.procs[node].kill()
            self.procs[node].wait()

    def shale(self, node, args, check=True, timeout=600):
        argv = [f"{self.bin}/shale", "--endpoint", f"unix://{self.roots[node]}/{node}/shaled.sock"] + args
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            die(f"shale {' '.join(args)} on {node} failed: {p.stderr.strip()}")
        return p

    def json(self, node, args):
        return json.loads(self.shale(node, args + ["-o", "json"]).stdout)

    def all_published(self):
        p = self.shale("node-a", ["node", "list", "-o", "json"], check=False)
        if p.returncode != 0:
            return False
        nodes = json.loads(p.stdout)["nodes"]
        return sum(n["state"] == "up" and bool(n["replica_address"]) for n in nodes) == len(NODES)

    def uri(self, node, volume):
        return f"nbd+unix:///{volume}?socket={self.roots[node]}/{node}/nbd.sock"

    def target(self, volume, node="node-a"):
        return ["--ioengine=nbd", f"--uri={self.uri(node, volume)}"]

    def pids(self):
        return {node: p.pid for node, p in self.procs.items()}

    def close(self):
        for node in list(self.procs):
            if self.procs[node].poll() is None:
                self.stop(node)
        if self.etcd is not None:
            self.etcd.terminate()
            self.etcd.wait(30)


def fio_with_cpu(cluster, args, volume, node="node-a"):
    """Runs fio on `volume` through `node`'s NBD socket; returns (fio result, {process: CPU
    seconds}, wall seconds)."""
    before = {n: cpu_seconds(pid) for n, pid in cluster.pids().items()}
    t0 = time.monotonic()
    cmd = ["fio", "--output-format=json", "--name=bench"] + args + cluster.target(volume, node)
    p = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        die(f"fio failed: {' '.join(cmd)}\n{p.stderr}")
    cpu = {n: cpu_seconds(pid) - before[n] for n, pid in cluster.pids().items()}
    result = json.loads(p.stdout[p.stdout.index("{"):])
    # The client's CPU: fio's job runs in a forked process, whose usr+sys fio reports (percent of
    # the job's runtime) — the parent's /proc entry would show almost nothing. Scaled to `wall`
    # so that it prints as that percentage, like the daemons' figures.
    job = result["jobs"][0]
    cpu["fio"] = (job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0)) / 100 * wall
    return result, cpu, wall


def replica_write_latency(cluster, volume):
    """{replica node: (writes, seconds)} of shale_replica_write_latency_seconds for `volume` on
    node-a (its target): each replica's data writes from the fan-out to its done."""
    with urllib.request.urlopen(f"http://{cluster.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'shale_replica_write_latency_seconds_(count|sum)\{([^}]*)\} (\S+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if labels.get("volume") != volume:
            continue
        count, total = out.get(labels["replica"], (0.0, 0.0))
        if m.group(1) == "count":
            count = float(m.group(3))
        else:
            total = float(m.group(3))
        out[labels["replica"]] = (count, total)
    return out


def mean_latency_ms(before, after):
    """{replica: mean ms of its writes between the two samples of replica_write_latency}."""
    out = {}
    for node, (count, total) in after.items():
        c0, t0 = before.get(node, (0.0, 0.0))
        if count > c0:
            out[node] = round(1000 * (total - t0) / (count - c0), 2)
    return out


def rewrite(cluster, volume, size, seed):
    """Writes all of `volume` with fresh data (every 4 KiB block differs from before)."""
    fio(["--rw=write", "--bs=1M", "--iodepth=8", f"--size={size}", "--refill_buffers",
         f"--randseed={seed}", "--end_fsync=1"], cluster.target(volume))


def replica(cluster, volume, node):
    for r in cluster.json("node-a", ["replica", "list", volume])["replicas"]:
        if r["node"] == node:
            return r
    die(f"{volume} has no replica on {node}")


def degrade_and_return(cluster, size, seed):
    """node-b out, v2 rewritten, node-b back; returns the rebuild count before."""
    done_before = replica(cluster, "v2", "node-b")["rebuilds"]
    cluster.kill("node-b")
    rewrite(cluster, "v2", size, seed)
    cluster.start("node-b")
    return done_before


def time_rebuild(cluster, done_before, probe=None):
    """Polls v2's rebuild on node-b; returns (bytes, seconds, probe result). `probe` (a fio
    argument list) is started as soon as the rebuild shows progress."""
    def started():
        r = replica(cluster, "v2", "node-b")
        return r if r["rebuilds"] > done_before or r["state"] == "rebuilding" else None
    wait_for(started, "the rebuild of v2 on node-b to start", 120, 0.05)
    t0 = time.monotonic()
    result = fio_with_cpu(cluster, probe, "v2") if probe else None
    probe_end = time.monotonic()
    final = wait_for(lambda: (lambda r: r if r["rebuilds"] > done_before else None)(
        replica(cluster, "v2", "node-b")), "the rebuild of v2 to finish", 1800, 0.05)
    seconds = time.monotonic() - t0
    if probe and probe_end >= t0 + seconds - 0.2:
        print("# warning: the rebuild ended before the latency probe did; use a larger --size",
              file=sys.stderr)
    cluster.shale("node-a", ["replica", "wait", "v2", "--timeout", "120"])
    return final["rebuild_total_bytes"], seconds, result


def write_path(cluster, args, samples):
    size = args.size
    for rep in range(args.reps):
        for w, spec in WORKLOADS.items():
            line = []
            for volume in ("v1", "v2", "v3"):
                timed = replica_write_latency(cluster, volume)
                result, cpu, wall = fio_with_cpu(cluster, [
                    f"--rw={spec['rw']}", f"--bs={spec['bs']}", f"--iodepth={spec['iodepth']}",
                    f"--size={size}", "--time_based", f"--runtime={args.runtime}",
                    "--ramp_time=1", "--norandommap", "--randrepeat=0"], volume)
                iops, p99 = fio_sample(result, spec["rw"])
                busy = {n: round(100 * s / wall) for n, s in cpu.items()}
                lat = mean_latency_ms(timed, replica_write_latency(cluster, volume))
                samples[w][volume].append(
                    {"iops": iops, "p99_us": p99, "cpu_percent": busy, "replica_write_ms": lat})
                line.append(f"{volume} {iops:8.0f} IOPS p99 {p99:8.1f} us cpu% {busy} "
                            f"replica write ms {lat}")
            print(f"# rep {rep + 1} {spec['label']:<18} | " + " | ".join(line), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runtime", type=int, default=5, help="seconds per fio run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--probe", type=int, default=3, help="seconds of the latency probe")
    ap.add_argument("--cap", default=None, help="--rebuild-bps of the capped rebuild")
    ap.add_argument("--only", choices=("write", "rebuild", "rebuild-latency", "diskless"),
                    default=None,
                    help="run only the write-path section, only the rebuild throughput (no "
                    "latency probe), the rebuild throughput and the latency probes, or the target "
                    "on a node without a replica")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--replica-pools-in-memory", action="store_true",
                    help="node-b's and node-c's pools on /dev/shm (see above)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.size = parse_size(args.size)
    for tool in ("fio", "nbdcopy"):
        if shutil.which(tool) is None:
            die(f"{tool} is missing: run scripts/deps")
    if shutil.which("etcd") is None and not os.access("/usr/bin/etcd", os.X_OK):
        die("etcd is missing (Debian etcd-server): run scripts/deps")
    work = tempfile.mkdtemp(prefix="shale-repl-bench-", dir=args.dir)
    args.shm = None
    if args.replica_pools_in_memory:
        args.shm = tempfile.mkdtemp(prefix="shale-repl-bench-", dir="/dev/shm")
    cluster = None
    samples = {w: {v: [] for v in ("v1", "v2", "v3")} for w in WORKLOADS}
    report = {}
    try:
        cluster = Cluster(args, work)
        for volume, flags in (("v1", []), ("v2", ["--replicas", "2", "--replica-nodes",
                                                  "node-a,node-b"]), ("v3", ["--replicas", "3"])):
            cluster.shale("node-a", ["volume", "create", volume, "--size", str(args.size)] + flags)
            print(f"# preconditioning {volume}", flush=True)
            rewrite(cluster, volume, args.size, 1)
        cluster.shale("node-a", ["replica", "wait", "v2", "--timeout", "60"])
        cluster.shale("node-a", ["replica", "wait", "v3", "--timeout", "60"])
        if args.only in (None, "write"):
            write_path(cluster, args, samples)
        if args.only == "diskless":
            diskless(cluster, args, report)
        elif args.only != "write":
            sections(cluster, args, report)
    finally:
        if cluster is not None:
            cluster.close()
        if args.shm is not None:
            shutil.rmtree(args.shm, ignore_errors=True)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    print_report(args, samples, report)


def sections(cluster, args, report):
    """The rebuild against nbdcopy, then (unless --only rebuild) the latency probes."""
    # Rebuild against nbdcopy of the same bytes between the same two daemons.
    cluster.shale("node-b", ["volume", "create", "copy", "--size", str(args.size)])
    t0 = time.monotonic()
    subprocess.run(["nbdcopy", cluster.uri("node-a", "v2"), cluster.uri("node-b", "copy")],
                   check=True)
    nbdcopy_s = time.monotonic() - t0
    rebuilt, rebuild_s, _ = time_rebuild(cluster, degrade_and_return(cluster, args.size, 2))
    report["rebuild"] = dict(bytes=rebuilt, seconds=rebuild_s, nbdcopy_seconds=nbdcopy_s,
                             rebuild_mib_s=rebuilt / rebuild_s / 2**20,
                             nbdcopy_mib_s=args.size / nbdcopy_s / 2**20)
    print(f"# rebuild {rebuilt} bytes in {rebuild_s:.2f} s; nbdcopy {args.size} bytes in "
          f"{nbdcopy_s:.2f} s", flush=True)

    if args.only == "rebuild":
        return
    # Client p99 with no rebuild, during an uncapped and during a capped rebuild. The probe must
    # end before the rebuild does (a probe that outlives it measures the quiet tail too): at most
    # 60 % of the time an idle rebuild of this size took (one under load takes longer).
    probe_s = max(1, min(args.probe, int(0.6 * rebuild_s)))
    if probe_s < args.probe:
        print(f"# latency probe shortened to {probe_s} s: the rebuild takes {rebuild_s:.1f} s idle",
              flush=True)
    probe = ["--rw=randwrite", "--bs=4k", "--iodepth=8", f"--size={args.size}",
             "--time_based", f"--runtime={probe_s}", "--norandommap", "--randrepeat=0"]
    idle = fio_with_cpu(cluster, probe, "v2")[0]
    uncapped = time_rebuild(cluster, degrade_and_return(cluster, args.size, 3), probe)
    cap = parse_size(args.cap) if args.cap else max(1 << 20, int(rebuilt / rebuild_s / 4))
    cluster.shale("node-a", ["qos", "rebuild-bps", str(cap)])  # live, for the next rebuild
    capped = time_rebuild(cluster, degrade_and_return(cluster, args.size, 4), probe)
    report["latency"] = {
        name: dict(zip(("iops", "p99_us"), fio_sample(res, "randwrite")),
                   rebuild_mib_s=(b / s / 2**20) if s else None)
        for name, res, b, s in (("no rebuild", idle, 0, 0),
                                ("uncapped rebuild", uncapped[2][0], uncapped[0], uncapped[1]),
                                (f"rebuild capped at {cap} B/s", capped[2][0], capped[0],
                                 capped[1]))}


DISKLESS_WORKLOADS = {
    "randread": dict(label="randread 4k qd32", rw="randread", bs="4k", iodepth=32),
    "randwrite": WORKLOADS["randwrite"],
    "read": dict(label="read 1M qd8", rw="read", bs="1M", iodepth=8),
    "write": WORKLOADS["write"],
}


def attach(cluster, node, volume):
    """Moves `volume`'s target to `node` (detach where it is, retried while clients linger)."""
    where = cluster.json(node, ["replica", "list", volume])["target"]
    if where != node:
        wait_for(lambda: cluster.shale(where, ["volume", "detach", volume], check=False)
                 .returncode == 0, f"detach of {volume} on {where}", 30)
    cluster.shale(node, ["volume", "attach", volume])


def diskless(cluster, args, report):
    """v2 served by node-a (a replica there) and by node-c (none), alternately."""
    runs = {w: {"node-a": [], "node-c": []} for w in DISKLESS_WORKLOADS}
    for rep in range(args.reps):
        for node in ("node-a", "node-c"):
            attach(cluster, node, "v2")
            line = []
            for w, spec in DISKLESS_WORKLOADS.items():
                result, _, _ = fio_with_cpu(cluster, [
                    f"--rw={spec['rw']}", f"--bs={spec['bs']}", f"--iodepth={spec['iodepth']}",
                    f"--size={args.size}", "--time_based", f"--runtime={args.runtime}",
                    "--ramp_time=1", "--norandommap", "--randrepeat=0"], "v2", node)
                iops, p99 = fio_sample(result, spec["rw"])
                runs[w][node].append({"iops": iops, "p99_us": p99})
                line.append(f"{spec['label']} {iops:.0f} IOPS p99 {p99:.0f} us")
            print(f"# rep {rep + 1} v2 served by {node}: " + " | ".join(line), flush=True)
    attach(cluster, "node-a", "v2")
    report["diskless"] = runs


def print_diskless(report):
    def med(values):
        return statistics.median(values) if values else float("nan")
    print("\n| v2 (replicas on node-a, node-b) | served by node-a IOPS | p99 us | served by node-c "
          "(no replica) IOPS | p99 us | node-c/node-a |\n|---|---|---|---|---|---|")
    for w, spec in DISKLESS_WORKLOADS.items():
        a, c = report["diskless"][w]["node-a"], report["diskless"][w]["node-c"]
        ratio = med([y["iops"] / x["iops"] for x, y in zip(a, c)])
        print(f"| {spec['label']} | {med([x['iops'] for x in a]):.0f} | "
              f"{med([x['p99_us'] for x in a]):.0f} | {med([x['iops'] for x in c]):.0f} | "
              f"{med([x['p99_us'] for x in c]):.0f} | {ratio:.2f}x |")


def print_report(args, samples, report):
    if args.only in (None, "write"):
        print_write_path(args, samples)
    if "diskless" in report:
        print_diskless(report)
    if "rebuild" in report:
        r = report["rebuild"]
        print(f"\nRebuild of {r['bytes'] / 2**20:.0f} MiB: {r['rebuild_mib_s']:.1f} MiB/s; nbdcopy "
              f"of the same size between the same daemons: {r['nbdcopy_mib_s']:.1f} MiB/s; "
              f"rebuild/nbdcopy {r['rebuild_mib_s'] / r['nbdcopy_mib_s']:.2f}x")
    if "latency" in report:
        print("\n| client 4k randwrite qd8 on v2 | IOPS | p99 us | rebuild MiB/s |\n|---|---|---|---|")
        for name, x in report["latency"].items():
            rate = f"{x['rebuild_mib_s']:.1f}" if x["rebuild_mib_s"] else "-"
            print(f"| {name} | {x['iops']:.0f} | {x['p99_us']:.0f} | {rate} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "samples": samples, **report}, f, indent=2)


def print_write_path(args, samples):
    def med(values):
        return statistics.median(values) if values else float("nan")
    print("\n| workload | 1 replica IOPS | p99 us | 2 replicas IOPS | p99 us | 3 replicas IOPS |"
          " p99 us | 2r/1r | 3r/1r |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w, spec in WORKLOADS.items():
        s = samples[w]
        row = f"| {spec['label']} |"
        for v in ("v1", "v2", "v3"):
            row += f" {med([x['iops'] for x in s[v]]):.0f} | {med([x['p99_us'] for x in s[v]]):.0f} |"
        for v in ("v2", "v3"):
            row += f" {med([x['iops'] / y['iops'] for x, y in zip(s[v], s['v1'])]):.2f}x |"
        print(row)
    print(f"\n(median of {args.reps} repetitions of {args.runtime} s; ratios are medians of "
          "per-repetition ratios)\n\nCPU % during the runs (median; 100 = one core):")
    for w, spec in WORKLOADS.items():
        for v in ("v1", "v2", "v3"):
            procs = samples[w][v][0]["cpu_percent"].keys()
            busy = {p: med([x["cpu_percent"][p] for x in samples[w][v]]) for p in procs}
            print(f"  {spec['label']:<18} {v}: " + ", ".join(f"{p} {c:.0f}" for p, c in busy.items()))
    print("\nMean latency of each replica's writes on the target (ms, median; from the fan-out to "
          "the replica's done: the local engine write, a remote replica's round trip):")
    for w, spec in WORKLOADS.items():
        for v in ("v1", "v2", "v3"):
            nodes = sorted({n for x in samples[w][v] for n in x["replica_write_ms"]})
            lat = {n: med([x["replica_write_ms"][n] for x in samples[w][v]
                           if n in x["replica_write_ms"]]) for n in nodes}
            print(f"  {spec['label']:<18} {v}: " +
                  (", ".join(f"{n} {m:.2f}" for n, m in lat.items()) or "- (no replication)"))


if __name__ == "__main__":
    main()
