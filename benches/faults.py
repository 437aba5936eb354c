#!/usr/bin/env python3
"""Issue 13's single-node faults, measured on kv binaries side by side (same run).

Three scenarios, each run against every binary given, one server at a time on a free
127.0.0.1 port:

  idle         N connections each pipeline 8 GETs of a 60 KB value and one 60 KB PUT
               (about 540 KB through each), then sit idle: server RSS per connection,
               over a baseline taken after one warm-up connection did the same, read
               once every connection thread is asleep and RSS has settled; and how much
               of it is thread stacks (from /proc/PID/smaps) and how much heap.
               --idle-ping: each connection sends one PING instead.
  subscribers  S subscribers of one bucket that never read, while one writer pipelines
               PUTs whose events are 11 bytes: peak server RSS, RSS once they have been
               dropped and closed, and the writer's PUTs/s, against the same writer with
               no subscriber. STATS `subscribers_dropped` at the end says whether they
               were still there: a writer fast enough fills the default 8 MiB backlog in
               a fraction of a second and then writes alone, so pass a larger
               --subscriber-backlog to measure the writer with them the whole time.
               Server CPU per PUT (utime + stime from /proc/PID/stat over the writer's
               run) is steadier than PUTs/s on a shared machine; --repeat N runs the
               binaries alternately N times and prints the median of each figure.
               --idle-instead opens the same connections without subscribing: more
               connections than cores alone move the writer's requests from its own
               thread to the worker's (worker.rs, apply_inline).
  sigterm      C clients pipeline PUTs without pause (--slow of them read slowly) and the server
               gets SIGTERM mid-stream, R runs: replies received (OK, `ERROR shutting
               down`), how each connection ended (clean EOF or reset), how many client
               streams ended without a single refusal (a client still writing at the
               stop must get refusals: an OK stream that just stops is replies the server
               dropped), the replies the server itself counts as lost (new binary only),
               and the seconds from the signal to the exit.

    cargo build --release
    python3 benches/faults.py old=/path/to/old/kv new=target/release/kv
    python3 benches/faults.py --only idle --connections 1000 new=target/release/kv
    python3 benches/faults.py --only subscribers --subscriber-backlog 1073741824 --repeat 5 old=... new=...

Installs nothing; every connection goes to 127.0.0.1; stops every server it started.
"""

import argparse
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

VALUE = b"x" * 60_000


def cpu_seconds(pid):
    """User plus system CPU time the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


class Server:
    """A kv server on a free port; its stderr is kept."""

    def __init__(self, binary, *flags):
        command = [binary, "serve", "--port", "0", "--max-connections", "20000", *flags]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.time() + 20
        self.port = None
        while time.time() < deadline and self.port is None:
            line = self.proc.stderr.readline()
            self.log.append(line)
            found = re.search(r"kv listening on \S+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
        if self.port is None:
            self.proc.kill()
            sys.exit(f"{binary} did not log its address")
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def connect(self):
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def rss(self):
        return rss_kib(self.proc.pid)

    def cpu(self):
        return cpu_seconds(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def recv_exactly(conn, n):
    chunks, have = [], 0
    while have < n:
        chunk = conn.recv(min(1 << 20, n - have))
        if not chunk:
            raise RuntimeError(f"closed after {have} of {n} bytes")
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def request(conn, line, reply_len):
    conn.sendall(line)
    return recv_exactly(conn, reply_len)


# ---------------------------------------------------------------------------------

def connection_threads_asleep(pid):
    """(connection threads, how many of them are asleep: state S in /proc)."""
    total = asleep = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()[0]
        if name.startswith("kv-conn"):
            total += 1
            asleep += state == "S"
    return total, asleep


def settled_rss(server, expect_threads, least, most=20.0):
    """VmRSS once the server is quiet: at least `least` seconds, then until every
    connection thread is asleep (blocked in its read) and two readings 0.5 s apart
    agree within 0.2% (the allocator is trimmed at most once a second), or `most`."""
    time.sleep(least)
    deadline = time.time() + most
    previous = None
    while time.time() < deadline:
        total, asleep = connection_threads_asleep(server.proc.pid)
        rss = server.rss()
        if total >= expect_threads and asleep == total and previous is not None and abs(rss - previous) <= rss / 500:
            return rss
        previous = rss
        time.sleep(0.5)
    print(f"  (not settled after {most} s: using the last reading)", file=sys.stderr)
    return server.rss()


def rss_by_kind(pid, stack_kib):
    """Resident KiB in thread stacks (anonymous mappings of exactly `stack_kib`, the
    connection stack size) and in the rest (malloc's heap and arenas, mostly)."""
    kinds = {"thread stacks": 0, "heap and other": 0}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$", line)
            if m:
                size = (int(m.group(2), 16) - int(m.group(1), 16)) // 1024
                kind = "thread stacks" if not m.group(3) and size == stack_kib else "heap and other"
            elif line.startswith("Rss:"):
                kinds[kind] += int(line.split()[1])
    return kinds


def idle(binary, args):
    """N connections each take a burst (or only a PING with --idle-ping) and go idle;
    RSS per connection over a baseline taken after a warm-up connection did the same."""
    server = Server(binary, "--workers", "2")
    try:
        setup = server.connect()
        request(setup, b"CREATE b\r\nPUT b k " + VALUE + b"\r\n", 8)
        reply = VALUE + b"\r\nOK\r\n"
        burst = b"GET b k\r\n" * 8 + b"PUT b other " + b"y" * 60_000 + b"\r\n"

        def one():
            conn = server.connect()
            if args.idle_ping:
                request(conn, b"PING\r\n", 6)
                return conn
            sender = threading.Thread(target=conn.sendall, args=(burst,))
            sender.start()
            got = recv_exactly(conn, len(reply) * 8 + 4)
            sender.join()
            assert got.startswith(reply) and got.endswith(b"OK\r\n")
            return conn

        # One-time costs (arenas, the store's value, first trims) go in the baseline.
        warm = one()
        before = settled_rss(server, 2, 1.0)
        kinds_before = rss_by_kind(server.proc.pid, args.stack_kib)
        conns = [one() for _ in range(args.connections)]
        after = settled_rss(server, args.connections + 2, args.settle)
        kinds_after = rss_by_kind(server.proc.pid, args.stack_kib)
        for conn in conns + [warm, setup]:
            conn.close()
        figures = {"KiB per idle connection": round((after - before) / args.connections, 2)}
        for kind in kinds_after:
            figures[f"  of which {kind}"] = round((kinds_after[kind] - kinds_before[kind]) / args.connections, 2)
        return figures
    finally:
        server.stop()


# ---------------------------------------------------------------------------------

def writer_rate(server, seconds, depth=256):
    """PUTs/s of one pipelining writer on bucket s for `seconds` (11-byte events)."""
    conn = server.connect()
    batch = b"".join(b"PUT s %d %d\r\n" % (i % 10, i % 10) for i in range(depth))
    done, start = 0, time.time()
    while time.time() - start < seconds:
        conn.sendall(batch)
        recv_exactly(conn, 4 * depth)
        done += depth
    rate = done / (time.time() - start)
    conn.close()
    return rate


def stat(conn, name):
    """One STATS figure."""
    conn.sendall(b"STATS\r\n")
    reply = b""
    while not reply.endswith(b"\r\nOK\r\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise RuntimeError("closed during STATS")
        reply += chunk
    for line in reply.decode().split("\r\n"):
        if line.startswith(name + " "):
            return int(line.split(" ", 1)[1])
    raise RuntimeError(f"STATS has no {name}")


def subscribers(binary, args):
    flags = ["--workers", "2"]
    if args.subscriber_backlog is not None:
        flags += ["--subscriber-backlog", str(args.subscriber_backlog)]
    server = Server(binary, *flags)
    try:
        setup = server.connect()
        request(setup, b"CREATE s\r\n", 4)
        base_rss = server.rss()
        cpu = server.cpu()
        alone = writer_rate(server, args.seconds)
        cpu_alone = (server.cpu() - cpu) / (alone * args.seconds)
        subs = []
        for _ in range(args.subscribers):
            sub = server.connect()
            sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            if not args.idle_instead:
                sub.sendall(b"SUBSCRIBE s\r\n")
            subs.append(sub)
        # The writer starts once every subscriber streams (or, with --idle-instead,
        # once the connections are open and the server has had a moment).
        deadline = time.time() + 30
        while not args.idle_instead and stat(setup, "subscribers") < args.subscribers and time.time() < deadline:
            time.sleep(0.05)
        peak = [server.rss()]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], server.rss())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        cpu = server.cpu()
        crowded = writer_rate(server, args.seconds)
        cpu_crowded = (server.cpu() - cpu) / (crowded * args.seconds)
        stop.set()
        sampler.join()
        dropped = stat(setup, "subscribers_dropped")
        for sub in subs:
            sub.close()
        time.sleep(args.settle)
        after = server.rss()
        return {
            "extra server CPU ns per PUT": round((cpu_crowded - cpu_alone) * 1e9),
            "PUTs/s alone": round(alone),
            f"PUTs/s with {args.subscribers} stuck": round(crowded),
            "slowdown %": round(100 * (1 - crowded / alone), 1),
            "server CPU ns per PUT alone": round(cpu_alone * 1e9),
            "server CPU ns per PUT with them": round(cpu_crowded * 1e9),
            "dropped during the run": dropped,
            "peak RSS MiB": round((peak[0] - base_rss) / 1024, 1),
            "RSS after drop MiB": round((after - base_rss) / 1024, 1),
        }
    finally:
        server.stop()


# ---------------------------------------------------------------------------------

def pipeliner(server, index, results, slow, started):
    """Pipelines PUTs of distinct keys until the server goes; counts the replies."""
    conn = server.connect()
    request(conn, b"CREATE p%d\r\n" % index, 4)
    received = bytearray()
    state = {"sent_lines": 0, "reset": False}

    def read():
        while True:
            try:
                chunk = conn.recv(4096 if slow else 1 << 20)
            except ConnectionResetError:
                state["reset"] = True
                return
            if not chunk:
                return
            received.extend(chunk)
            if slow:
                time.sleep(0.001)

    reader = threading.Thread(target=read)
    reader.start()
    started.release()
    i = 0
    try:
        while i < 3_000_000:
            chunk = b"".join(b"PUT p%d k%d v\r\n" % (index, j) for j in range(i, i + 1000))
            conn.sendall(chunk)
            i += 1000
            state["sent_lines"] = i
    except OSError:
        pass
    reader.join()
    data = bytes(received)
    ok = data.count(b"OK\r\n")
    refused = data.count(b"ERROR shutting down\r\n")
    results[index] = {"sent": state["sent_lines"], "ok": ok, "refused": refused,
                      "reset": state["reset"], "tail": data[-30:]}


def sigterm(binary, args):
    totals = {"OK": 0, "refused": 0, "clean EOF": 0, "reset": 0,
              "ended without a refusal": 0, "server-counted lost": 0, "exit s": []}
    for run in range(args.runs):
        server = Server(binary, "--workers", "2")
        results = {}
        started = threading.Semaphore(0)
        threads = [threading.Thread(target=pipeliner, args=(server, c, results, c < args.slow, started))
                   for c in range(args.clients)]
        for t in threads:
            t.start()
        for _ in threads:
            started.acquire()
        time.sleep(args.signal_after)
        signalled = time.time()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=60)
        totals["exit s"].append(round(time.time() - signalled, 1))
        for t in threads:
            t.join(timeout=60)
        server.reader.join(timeout=5)
        for line in server.log:
            m = re.search(r"about (\d+) replies to requests read before the stop were lost", line)
            if m:
                totals["server-counted lost"] += int(m.group(1))
        for r in results.values():
            totals["OK"] += r["ok"]
            totals["refused"] += r["refused"]
            totals["reset" if r["reset"] else "clean EOF"] += 1
            # A client still writing when the server stopped must see refusals; an
            # OK stream that just stops means replies the server owed were dropped.
            totals["ended without a refusal"] += int(r["refused"] == 0)
    return totals


SCENARIOS = {"idle": idle, "subscribers": subscribers, "sigterm": sigterm}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binaries", nargs="+", help="NAME=PATH of a kv binary")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--subscriber-backlog", type=int, help="the server's flag (default: its default)")
    parser.add_argument(
        "--idle-instead", action="store_true", help="subscribers: open the connections but do not subscribe"
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before the idle reading")
    parser.add_argument("--idle-ping", action="store_true", help="idle: each connection sends only PING")
    parser.add_argument(
        "--stack-kib", type=int, default=64, help="idle: the connection stack size (config.rs), to find stacks in smaps"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--slow", type=int, default=1, help="how many of the clients read slowly")
    parser.add_argument("--signal-after", type=float, default=1.0)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each scenario this many times, binaries alternating; print medians"
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for scenario in args.only or ["idle", "subscribers", "sigterm"]:
        results = {}
        # Binaries alternate within each repetition, so a busy spell on this shared
        # machine hits them alike; the medians are printed after the last one.
        for repetition in range(args.repeat):
            for spec in args.binaries:
                name, path = spec.split("=", 1)
                print(f"{scenario} {name}: ...", file=sys.stderr)
                figures = SCENARIOS[scenario](path, args)
                results.setdefault(name, []).append(figures)
                print(f"{scenario}\t{name}\t{figures}", flush=True)
        if args.repeat > 1:
            for name, runs in results.items():
                print(f"{scenario}\t{name}\tmedian of {len(runs)}: {medians(runs)}", flush=True)


def medians(runs):
    """The median of each numeric figure over `runs` (dicts with the same keys)."""
    out = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            out[key] = statistics.median(run[key] for run in runs)
    return out


if __name__ == "__main__":
    main()
