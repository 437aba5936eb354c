# benches/lib.sh: the small shell helpers every benchmark script uses, sourced (not run)
# by benches/*.sh after they `cd` to the repository root:
#
#   . benches/lib.sh
#
# Reading a process's counters from /proc, picking a port, and the arithmetic of the
# result tables. Each script keeps what is its own (how it starts servers, what it
# measures); what is here behaves the same for all of them.

# A number from one line of `kv bench --json` output: field JSON NAME.
field() { sed -n "s/.*\"$2\":\\([-0-9.e]*\\).*/\\1/p" <<<"$1"; }

# The median of the numbers on standard input (space- or line-separated); nan if none.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "nan" }'; }

# A / B to two decimals; "-" when either is missing or B is not positive.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "nan" && b != "nan") printf "%.2f", a / b; else printf "-" }'; }

# CPU time of process PID, all its threads, in clock ticks (utime + stime).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Resident memory of process PID, in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# True when something accepts connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on, below the kernel's ephemeral range, so that no client
# socket of this very run can hold the port a server is about to bind.
EPHEMERAL_LOW=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    local port tries=0 span=$((EPHEMERAL_LOW - 10000))
    while ((tries++ < 100)); do
        port=$((10000 + RANDOM % span))
        port_open "$port" || { echo "$port"; return; }
    done
    echo "benches/lib.sh: no free port found" >&2
    exit 1
}
