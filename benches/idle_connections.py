#!/usr/bin/env python3
"""Memory per idle connection: kv beside Redis and memcached.

Starts one server at a time on a free loopback port, reads its resident set size
(VmRSS in /proc/<pid>/status), opens N connections that each send one cheap request
and read its reply (kv: PING, Redis: PING, memcached: version), leaves them all open
and idle, reads VmRSS again and prints (after - before) / N. It also prints how much
the kernel's thread stacks (KernelStack in /proc/meminfo, machine-wide, so only
meaningful on an otherwise quiet machine) grew: a thread-per-connection server pays
that outside its RSS.

    cargo build --release
    python3 benches/idle_connections.py                      # kv, redis, memcached
    python3 benches/idle_connections.py --servers kv --env MALLOC_ARENA_MAX=2

Needs an open-file limit of N + a few hundred for this script and for each server
(the script raises its soft limit to the hard one; servers inherit it). Every
connection goes to 127.0.0.1 only.
"""

import argparse
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time

REQUESTS = {
    "kv": (b"PING\r\n", b"PONG\r\n"),
    "redis": (b"PING\r\n", b"+PONG\r\n"),
    "memcached": (b"version\r\n", b"VERSION "),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def rss_by_mapping(pid):
    """Resident KiB per kind of mapping: [heap], [stack], file-backed, and anonymous
    ones grouped by size (a thread stack is one anonymous mapping of the stack size;
    glibc's malloc arenas are the big ones)."""
    kinds = {}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
            if m:
                size = (int(m.group(2), 16) - int(m.group(1), 16)) // 1024
                name = m.group(4)
                if not name:
                    name = "anonymous >= 1 MiB" if size >= 1024 else f"anonymous {size} KiB"
                kind = name
            elif line.startswith("Rss:"):
                kinds[kind] = kinds.get(kind, 0) + int(line.split()[1])
    return kinds


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))


def kernel_stack_kib():
    with open("/proc/meminfo") as f:
        return int(re.search(r"^KernelStack:\s+(\d+) kB", f.read(), re.M).group(1))


def start(server, kv_binary, n, env):
    """Starts `server`; returns (process, port)."""
    if server == "kv":
        command = [kv_binary, "serve", "--port", "0", "--max-connections", str(n + 100)]
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, env=env, text=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"kv listening on \S+:(\d+)", line)
            if found:
                # Keep draining stderr so the server never blocks on a full pipe.
                threading.Thread(target=proc.stderr.read, daemon=True).start()
                return proc, int(found.group(1))
        proc.kill()
        sys.exit("kv did not log its address")
    port = free_port()
    if server == "redis":
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--maxclients", str(n + 100), "--loglevel", "warning"]
    else:
        command = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-c", str(n + 100)]
        if os.geteuid() == 0:
            command += ["-u", "root"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"{server} did not start")


def open_idle(port, n, request, reply, wave=500):
    """Opens n connections in waves; each sends `request` and reads `reply`."""
    conns = []
    while len(conns) < n:
        batch = [socket.create_connection(("127.0.0.1", port), timeout=20)
                 for _ in range(min(wave, n - len(conns)))]
        sel = selectors.DefaultSelector()
        for s in batch:
            s.sendall(request)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, bytearray())
        pending = len(batch)
        deadline = time.time() + 30
        while pending:
            if time.time() > deadline:
                sys.exit(f"{pending} replies missing after 30 s")
            for key, _ in sel.select(timeout=1):
                data = key.fileobj.recv(4096)
                if not data:
                    sys.exit(f"server closed a connection ({len(conns)} open)")
                key.data.extend(data)
                if bytes(key.data).startswith(reply):
                    sel.unregister(key.fileobj)
                    pending -= 1
        sel.close()
        conns.extend(batch)
    return conns


def measure(server, kv_binary, n, env):
    proc, port = start(server, kv_binary, n, env)
    try:
        request, reply = REQUESTS[server]
        # One connection first, so one-time allocations (e.g. a first thread's
        # malloc arena) do not count against the per-connection figure.
        warm = open_idle(port, 1, request, reply)
        time.sleep(1)
        before, stack_before, threads_before = rss_kib(proc.pid), kernel_stack_kib(), threads_of(proc.pid)
        maps_before = rss_by_mapping(proc.pid)
        conns = open_idle(port, n, request, reply)
        time.sleep(2)
        after, stack_after, threads_after = rss_kib(proc.pid), kernel_stack_kib(), threads_of(proc.pid)
        maps_after = rss_by_mapping(proc.pid)
        growth = {k: (maps_after.get(k, 0) - maps_before.get(k, 0)) / n for k in maps_after.keys() | maps_before.keys()}
        for s in conns + warm:
            s.close()
        return {
            "server": server,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "rss_per_conn_kib": (after - before) / n,
            "kernel_stack_per_conn_kib": (stack_after - stack_before) / n,
            "threads": threads_after - threads_before,
            "growth": sorted(growth.items(), key=lambda item: -item[1]),
        }
    finally:
        proc.kill()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--servers", default="kv,redis,memcached")
    parser.add_argument("--kv-binary", default="target/release/kv")
    parser.add_argument("--breakdown", action="store_true",
                        help="also show where each server's RSS grew, by kind of mapping")
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE for the kv server's environment, e.g. MALLOC_ARENA_MAX=2")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.connections + 500
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        sys.exit(f"open-file limit {soft} (hard {hard}) is below the {needed} needed")

    env = dict(os.environ)
    env.pop("RUST_LOG", None)
    for pair in args.env:
        name, _, value = pair.partition("=")
        env[name] = value

    print(f"{'server':<10} {'conns':>6} {'RSS before':>11} {'RSS after':>10} "
          f"{'RSS/conn':>9} {'kstack/conn':>12} {'threads':>8}")
    for server in args.servers.split(","):
        if server != "kv" and shutil.which({"redis": "redis-server"}.get(server, server)) is None:
            print(f"{server:<10} not installed")
            continue
        r = measure(server, args.kv_binary, args.connections, env if server == "kv" else dict(os.environ))
        print(f"{server:<10} {args.connections:>6} {r['rss_before_kib']:>8} KiB {r['rss_after_kib']:>7} KiB "
              f"{r['rss_per_conn_kib']:>5.2f} KiB {r['kernel_stack_per_conn_kib']:>8.2f} KiB {r['threads']:>8}")
        if args.breakdown:
            for kind, kib in r["growth"][:4]:
                print(f"    {kib:>6.2f} KiB per connection in {kind}")


if __name__ == "__main__":
    main()
