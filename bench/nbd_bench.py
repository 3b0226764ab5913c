#!/usr/bin/env python3
"""NBD benchmark: shaled's export against raw io_uring, qemu-nbd and nbdkit (../../shared/BENCH.md).

In one run and in turn, on files of the same size on the same filesystem, with the same client:
  raw       fio --ioengine=io_uring --direct=1 on a preconditioned raw file (the limit)
  qemu-nbd  qemu-nbd -f raw -t --cache=none --aio=io_uring on that file
  nbdkit    nbdkit file on that file
  shaled    shaled's NBD export of a preconditioned volume of the same size
  ceiling   nbdkit memory SIZE: an NBD server without a disk (RAM, written end to end first) --
            how fast this client gets through any NBD server on this machine; shaled/raw cannot
            exceed ceiling/raw, so the ceiling tells the client's and the loopback's share of a
            gap to raw from the server's
The client of every NBD server is fio --ioengine=nbd --uri=nbd://127.0.0.1:PORT/EXPORT.
With --tls (docs/security.md): shaled plain (--nbd-insecure-tcp) vs shaled over TLS
(--nbd-tls-x509-dir) vs qemu-nbd over TLS (--object tls-creds-x509, with shaled's TLS
priorities so both negotiate the same cipher) with the same certificates
(made with certtool: a CA and a server certificate for 127.0.0.1); fio connects with
nbds://127.0.0.1:PORT/bench?tls-verify-peer=false URIs. Neither server asks for a client
certificate and fio does not check the server's: fio's nbd engine may not read local files
(tls-certificates=), and libnbd running as root looks only in /etc/pki/libnbd. The record layer,
which is what the figures measure, is the same as with mutual certificates.
Workloads: 4 KiB randread/randwrite at iodepth 32, 1 MiB sequential read/write at iodepth 8
(BENCH.md's four), then the same writes with a FLUSH every 32 (4 KiB) or 8 (1 MiB) writes, as a
filesystem's journal asks for (randwrite-flush, write-flush), and 1 MiB reads of the whole
file or volume once after `echo 3 > /proc/sys/vm/drop_caches` (read-cold; root). nbdkit's file
plugin writes through the page cache and reads from it: the variants show what that buys it.
The CPU of each server process (all its threads, from /proc) and of the client (fio's usr+sys)
over each run is printed too: on 2 cores, what ran out first. Each is repeated --reps times (servers in turn within a repetition); the table shows the median
IOPS and p99 latency per server and the median of the per-repetition ratios shaled/qemu-nbd,
shaled/best peer (the faster of qemu-nbd and nbdkit in that repetition; the ceiling is not a
peer), shaled/raw, ceiling/raw and shaled/ceiling (absolute figures are noisy on shared machines;
ratios are what to compare).

    bench/nbd_bench.py [--build-dir build] [--size 2G] [--runtime 5] [--reps 3] [--warmup 2]
                       [--workloads randread,randwrite,read,write,randwrite-flush,...]
                       [--servers raw,qemu-nbd,nbdkit,shaled,ceiling[,threaded]] [--dir DIR] [--json FILE]
    bench/nbd_bench.py --tls     (servers shaled,shaled-tls,qemu-nbd-tls)
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

WORKLOADS = {
    "randread": dict(label="randread 4k qd32", rw="randread", bs="4k", iodepth=32),
    "randwrite": dict(label="randwrite 4k qd32", rw="randwrite", bs="4k", iodepth=32),
    "read": dict(label="read 1M qd8", rw="read", bs="1M", iodepth=8),
    "write": dict(label="write 1M qd8", rw="write", bs="1M", iodepth=8),
    # What a filesystem on the volume asks for: its journal commits flush the device. A server
    # that acknowledges writes from the page cache pays for them at the flush.
    "randwrite-flush": dict(label="randwrite 4k qd32 flush/32", rw="randwrite", bs="4k",
                            iodepth=32, fsync=32),
    "write-flush": dict(label="write 1M qd8 flush/8", rw="write", bs="1M", iodepth=8, fsync=8),
    # Every byte read once after the page cache was dropped: what the disk serves, not RAM.
    "read-cold": dict(label="read 1M qd8 cold", rw="read", bs="1M", iodepth=8, cold=True),
}
# The four workloads of BENCH.md, then the durable and cold variants that tell caching from
# serving (docs/performance.md, "NBD exports").
DEFAULT_WORKLOADS = ["randread", "randwrite", "read", "write", "randwrite-flush", "write-flush",
                     "read-cold"]
PEERS = ["qemu-nbd", "nbdkit"]
SERVERS = ["raw", "qemu-nbd", "nbdkit", "shaled", "ceiling"]
# Also available: "threaded", the thread-per-connection experiment (bench/nbd_threaded_experiment.cc)
# that docs/nbd.md compares with shaled's reactor data path.
# "shaled-cached": shaled --read-cache page (reads through the kernel's page cache, as nbdkit's
# are; writes stay O_DIRECT).
ALL_SERVERS = SERVERS + ["shaled-cached", "threaded", "shaled-tls", "qemu-nbd-tls"]
TLS_SERVERS = ["shaled", "shaled-tls", "qemu-nbd-tls"]
# qemu-nbd gets shaled's GnuTLS priorities (tls/credentials.cc) so both negotiate the same cipher:
# GnuTLS's defaults pick ChaCha20-Poly1305 on some VMs with AES-NI.
TLS_PRIORITY = ("NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
                "+CHACHA20-POLY1305:+AES-256-CCM:+AES-128-CCM:%SERVER_PRECEDENCE")


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"nbd_bench: {what} exited early (code {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nbd_bench: {what} does not accept connections on port {port}")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE, **kw).stdout


def fio(args, target_args):
    cmd = ["fio", "--output-format=json", "--name=bench"] + args + target_args
    out = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if out.returncode != 0:
        sys.exit(f"nbd_bench: fio failed: {' '.join(cmd)}\n{out.stderr}")
    # fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    return json.loads(out.stdout[out.stdout.index("{"):])


def fio_sample(result, rw):
    job = result["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    p99 = side["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0
    return side["iops"], p99


def fio_cpu(result):
    """The client's CPU, in % of one core over its run (fio's own accounting, libnbd included)."""
    job = result["jobs"][0]
    return job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0)


def cpu_seconds(pid):
    """User + system CPU of a process and all its threads so far (io_uring workers included)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop_page_cache():
    """Writes back and drops the page cache, so that the next read comes from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def make_pki(work):
    """A CA and a server certificate for 127.0.0.1 (certtool) in two server directories: qemu-nbd's
    (qemu wants ca-cert.pem; verify-peer=off) and shaled's (without ca-cert.pem, so shaled asks no
    client certificate either). Returns both."""
    pki = os.path.join(work, "pki")
    server = os.path.join(work, "tls-server-qemu")
    client = os.path.join(work, "tls-server-shaled")
    for d in (pki, server, client):
        os.makedirs(d, exist_ok=True)

    def cert(name, template, ca=True):
        key = os.path.join(pki, f"{name}-key.pem")
        crt = os.path.join(pki, f"{name}-cert.pem")
        info = os.path.join(pki, f"{name}.info")
        with open(info, "w") as f:
            f.write(template)
        run(["certtool", "--generate-privkey", "--key-type=ecdsa", "--sec-param=high",
             "--outfile", key], stderr=subprocess.DEVNULL)
        if name == "ca":
            run(["certtool", "--generate-self-signed", "--load-privkey", key, "--template", info,
                 "--outfile", crt], stderr=subprocess.DEVNULL)
        else:
            run(["certtool", "--generate-certificate", "--load-privkey", key,
                 "--load-ca-certificate", os.path.join(pki, "ca-cert.pem"),
                 "--load-ca-privkey", os.path.join(pki, "ca-key.pem"), "--template", info,
                 "--outfile", crt], stderr=subprocess.DEVNULL)
        return crt, key

    ca, _ = cert("ca", 'cn = "bench CA"\nca\ncert_signing_key\nexpiration_days = 2\n')
    scrt, skey = cert("server", 'cn = "localhost"\nip_address = "127.0.0.1"\n'
                      'tls_www_server\nsigning_key\nexpiration_days = 2\n')
    for src, dst in ((ca, "ca-cert.pem"), (scrt, "server-cert.pem"), (skey, "server-key.pem")):
        shutil.copy(src, os.path.join(server, dst))
    for src, dst in ((scrt, "server-cert.pem"), (skey, "server-key.pem")):
        shutil.copy(src, os.path.join(client, dst))
    return server, client


class Servers:
    """Starts and stops every peer; remembers each one's fio target arguments."""

    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.procs = []
        self.targets = {}
        self.pids = {}  # server name -> pid, for its CPU time

    def start_shaled(self, name, size, listen_args):
        a = self.args
        data = os.path.join(self.work, name)
        shaled = os.path.join(a.build_dir, "bin", "shaled")
        shale = os.path.join(a.build_dir, "bin", "shale")
        pool = size + max(size // 16, 256 << 20)  # clusters for the volume plus metadata room
        port = free_port()
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen([shaled, "--data-dir", data, "--default-pool-size", str(pool),
                              "--nbd-listen", f"127.0.0.1:{port}", "--nbd-socket", "none",
                              "--metrics-listen", "none",
                              "--reactors", str(a.reactors)] + listen_args,
                             stdout=log, stderr=log)
        self.procs.append(p)
        self.pids[name] = p.pid
        wait_port(port, p, name)
        endpoint = f"unix://{data}/shaled.sock"
        deadline = time.monotonic() + 30
        while subprocess.run([shale, "--endpoint", endpoint, "status"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            if time.monotonic() > deadline:
                sys.exit(f"nbd_bench: {name} does not answer")
            time.sleep(0.05)
        run([shale, "--endpoint", endpoint, "volume", "create", "bench", "--size", str(size)])
        return port, log

    def start(self, raw_file, size):
        a = self.args
        servers = a.servers.split(",")
        self.targets["raw"] = ["--ioengine=io_uring", "--direct=1", f"--filename={raw_file}"]

        port = free_port()
        p = subprocess.Popen(["qemu-nbd", "-f", "raw", "-t", "--cache=none", "--aio=io_uring",
                              "-b", "127.0.0.1", "-p", str(port), "-x", "bench", raw_file],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        self.pids["qemu-nbd"] = p.pid
        wait_port(port, p, "qemu-nbd")
        self.targets["qemu-nbd"] = ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/bench"]

        port = free_port()
        p = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "file",
                              raw_file], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        self.pids["nbdkit"] = p.pid
        wait_port(port, p, "nbdkit")
        self.targets["nbdkit"] = ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/"]

        if "ceiling" in servers:
            port = free_port()
            p = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "memory",
                                  str(size)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(p)
            self.pids["ceiling"] = p.pid
            wait_port(port, p, "nbdkit memory")
            self.targets["ceiling"] = ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/"]

        port, log = self.start_shaled("shaled", size, ["--nbd-insecure-tcp"])
        self.targets["shaled"] = ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/bench"]

        if "shaled-cached" in servers:
            port, _ = self.start_shaled("shaled-cached", size,
                                        ["--nbd-insecure-tcp", "--read-cache", "page"])
            self.targets["shaled-cached"] = ["--ioengine=nbd",
                                             f"--uri=nbd://127.0.0.1:{port}/bench"]

        if "shaled-tls" in servers or "qemu-nbd-tls" in servers:
            qemu_dir, shaled_dir = make_pki(self.work)
            query = "?tls-verify-peer=false"
        if "shaled-tls" in servers:
            port, _ = self.start_shaled("shaled-tls", size, ["--nbd-tls-x509-dir", shaled_dir])
            self.targets["shaled-tls"] = ["--ioengine=nbd",
                                          f"--uri=nbds://127.0.0.1:{port}/bench{query}"]
        if "qemu-nbd-tls" in servers:
            # Its own file: qemu-nbd locks the image it serves.
            tls_file = raw_file + ".tls"
            fio(["--rw=write", "--bs=1M", "--iodepth=8", f"--size={size}", "--end_fsync=1"],
                ["--ioengine=io_uring", "--direct=1", f"--filename={tls_file}"])
            port = free_port()
            p = subprocess.Popen(["qemu-nbd", "-f", "raw", "-t", "--cache=none", "--aio=io_uring",
                                  "--object", "tls-creds-x509,id=tls0,endpoint=server,dir="
                                  f"{qemu_dir},verify-peer=off,priority={TLS_PRIORITY}",
                                  "--tls-creds", "tls0",
                                  "-b", "127.0.0.1", "-p", str(port), "-x", "bench", tls_file],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(p)
            self.pids["qemu-nbd-tls"] = p.pid
            wait_port(port, p, "qemu-nbd (TLS)")
            self.targets["qemu-nbd-tls"] = ["--ioengine=nbd",
                                            f"--uri=nbds://127.0.0.1:{port}/bench{query}"]

        if "threaded" in servers:
            exe = os.path.join(a.build_dir, "bin", "shale-nbd-threaded-experiment")
            port = free_port()
            p = subprocess.Popen([exe, "--data-dir", os.path.join(self.work, "threaded"),
                                  "--size", str(size), "--port", str(port)],
                                 stdout=log, stderr=log)
            self.procs.append(p)
            self.pids["threaded"] = p.pid
            wait_port(port, p, "the threaded experiment")
            self.targets["threaded"] = ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/bench"]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    ap.add_argument("--dir", help="work directory (a fresh one under /var/tmp by default)")
    ap.add_argument("--size", default="2G", help="size of the raw file and of the volume")
    ap.add_argument("--runtime", type=int, default=5, help="seconds per fio run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2,
                    help="seconds per workload and server of an untimed first pass")
    ap.add_argument("--reactors", type=int, default=1, help="shaled --reactors")
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                    help=f"choose from {','.join(WORKLOADS)}")
    ap.add_argument("--servers", default=None,
                    help=f"default {','.join(SERVERS)}; with --tls {','.join(TLS_SERVERS)}")
    ap.add_argument("--tls", action="store_true",
                    help="compare shaled plain, shaled over TLS and qemu-nbd over TLS")
    ap.add_argument("--json", help="also write every sample to this file")
    a = ap.parse_args()
    a.build_dir = os.path.abspath(a.build_dir)
    if a.servers is None:
        a.servers = ",".join(TLS_SERVERS if a.tls else SERVERS)
    size = parse_size(a.size)
    workloads = a.workloads.split(",")
    servers = a.servers.split(",")
    for s in servers:
        if s not in ALL_SERVERS:
            sys.exit(f"nbd_bench: unknown server {s} (choose from {', '.join(ALL_SERVERS)})")
    if "shaled" not in servers:
        sys.exit("nbd_bench: --servers must include shaled")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"nbd_bench: unknown workload {w} (choose from {', '.join(WORKLOADS)})")
    if any(WORKLOADS[w].get("cold") for w in workloads) and os.geteuid() != 0:
        sys.exit("nbd_bench: read-cold drops the page cache, which needs root (or leave it out "
                 "of --workloads)")
    for tool in ["fio", "qemu-nbd", "nbdkit", "certtool"]:
        if shutil.which(tool) is None:
            sys.exit(f"nbd_bench: {tool} is missing (scripts/deps installs it)")

    work = a.dir or tempfile.mkdtemp(prefix="shale-nbd-bench-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    servers_proc = Servers(a, work)
    samples = {w: {s: [] for s in servers} for w in workloads}
    try:
        raw_file = os.path.join(work, "raw.img")
        print(f"# work dir {work}; size {size >> 20} MiB; runtime {a.runtime}s; reps {a.reps}",
              flush=True)
        print("# preconditioning the raw file", flush=True)
        fio(["--rw=write", "--bs=1M", "--iodepth=8", f"--size={size}", "--end_fsync=1"],
            ["--ioengine=io_uring", "--direct=1", f"--filename={raw_file}"])
        servers_proc.start(raw_file, size)
        for s in ("shaled", "shaled-cached", "threaded", "shaled-tls", "ceiling"):
            if s in servers:
                print(f"# preconditioning the {s} volume (written end to end through NBD)",
                      flush=True)
                fio(["--rw=write", "--bs=1M", "--iodepth=8", f"--size={size}"],
                    servers_proc.targets[s])
        def workload_args(spec, runtime):
            args = [f"--rw={spec['rw']}", f"--bs={spec['bs']}", f"--iodepth={spec['iodepth']}",
                    f"--size={size}", "--norandommap", "--randrepeat=0"]
            if spec.get("fsync"):
                args.append(f"--fsync={spec['fsync']}")
            if not spec.get("cold"):
                args += ["--time_based", f"--runtime={runtime}", "--ramp_time=1"]
            return args

        def sample(spec, common, s):
            if spec.get("cold"):
                drop_page_cache()
            pid = servers_proc.pids.get(s)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            result = fio(common, servers_proc.targets[s])
            server_cpu = 100.0 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            iops, p99 = fio_sample(result, spec["rw"])
            return {"iops": iops, "p99_us": p99, "server_cpu": server_cpu,
                    "client_cpu": fio_cpu(result)}

        if a.warmup > 0:
            print("# warm-up pass (not measured)", flush=True)
            for w in workloads:
                for s in servers:
                    if not WORKLOADS[w].get("cold"):
                        fio(workload_args(WORKLOADS[w], a.warmup), servers_proc.targets[s])
        for rep in range(a.reps):
            for w in workloads:
                spec = WORKLOADS[w]
                common = workload_args(spec, a.runtime)
                line = []
                for s in servers:
                    x = sample(spec, common, s)
                    samples[w][s].append(x)
                    line.append(f"{s} {x['iops']:9.0f} IOPS p99 {x['p99_us']:8.1f} us "
                                f"cpu {x['server_cpu']:3.0f}/{x['client_cpu']:3.0f}%")
                print(f"# rep {rep + 1} {spec['label']:<18} | " + " | ".join(line), flush=True)
    finally:
        servers_proc.stop()
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)

    def med(values):
        return statistics.median(values) if values else float("nan")

    head = "| workload |" + "".join(f" {s} IOPS | p99 us |" for s in servers)
    ratios = [(num, den) for num, den in (("shaled", "qemu-nbd"), ("shaled", "raw"),
                                          ("ceiling", "raw"), ("shaled", "ceiling"),
                                          ("shaled-cached", "raw"), ("shaled-cached", "shaled"),
                                          ("shaled", "threaded"), ("shaled-tls", "shaled"),
                                          ("shaled-tls", "qemu-nbd-tls"))
              if num in servers and den in servers]
    peers = [p for p in PEERS if p in servers]
    against_peers = [s for s in ("shaled", "shaled-cached") if s in servers] if peers else []
    head += "".join(f" {s}/best peer |" for s in against_peers)
    head += "".join(f" {n}/{d} |" for n, d in ratios)
    print()
    print(head)
    print("|---" * (1 + 2 * len(servers) + len(ratios) + len(against_peers)) + "|")
    for w in workloads:
        row = f"| {WORKLOADS[w]['label']} |"
        for s in servers:
            row += f" {med([x['iops'] for x in samples[w][s]]):.0f} |"
            row += f" {med([x['p99_us'] for x in samples[w][s]]):.0f} |"
        for ours in against_peers:
            best = [max(samples[w][p][i]["iops"] for p in peers) for i in range(a.reps)]
            per_rep = [x["iops"] / b for x, b in zip(samples[w][ours], best) if b > 0]
            row += f" **{med(per_rep):.2f}x** |"
        for n, d in ratios:
            per_rep = [x["iops"] / y["iops"] for x, y in zip(samples[w][n], samples[w][d])
                       if y["iops"] > 0]
            row += f" {med(per_rep):.2f}x |"
        print(row)
    print(f"\n(median of {a.reps} repetitions; ratios are medians of per-repetition ratios)")
    # Which resource ran out: on 2 cores, a server and a client near 100% each leave nothing.
    print("\nCPU, % of one core over each run (median): server process (all threads) / client "
          "(fio with libnbd; for raw, fio alone)")
    print("| workload |" + "".join(f" {s} |" for s in servers))
    print("|---" * (1 + len(servers)) + "|")
    for w in workloads:
        row = f"| {WORKLOADS[w]['label']} |"
        for s in servers:
            row += (f" {med([x['server_cpu'] for x in samples[w][s]]):.0f} / "
                    f"{med([x['client_cpu'] for x in samples[w][s]]):.0f} |")
        print(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"size": size, "runtime": a.runtime, "reps": a.reps, "samples": samples},
                      f, indent=2)


if __name__ == "__main__":
    main()
