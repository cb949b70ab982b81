#!/usr/bin/env python3
"""Redis's instructions per hold of lua/reserve.lua, counted by callgrind.

Starts a throw-away redis-server under `valgrind --tool=callgrind` on a free
127.0.0.1 port (temp dir, no persistence), loads lib.lua + reserve.lua the way
the service does (prelude, newline, body), preloads one shard with stock to
spare and sends `--calls` EVALSHA calls of B fresh requests each (each with
its key's claim, as on one Redis server; 4 calls in flight, as 4 shard lanes
would), for every B of `--batch`. Between a warm-up and the measured calls the
counters are zeroed (callgrind_control), so the figure is the server's own
user-space instructions per hold: repeatable on a shared machine where CPU
time is not (bench/README.md, "Redis instructions per hold").

    python3 bench/redis_instructions.py                # B = 1, 25, 64
    python3 bench/redis_instructions.py --batch 25 --lua-dir lua --calls 400
    # the version before 1d3c1e8, for comparison:
    mkdir -p /tmp/old && for f in lib reserve; do git show 1d3c1e8^:lua/$f.lua > /tmp/old/$f.lua; done
    python3 bench/redis_instructions.py --lua-dir /tmp/old --old-layout

The floor: the same tool measures a bare check-and-DECRBY script (FLOOR_LUA
below: per request one argument, its qty; GET the stock, DECRBY it when
there is enough) at the same batch sizes and the same calls in flight, and
prints each hold's ratio to it: the part of a hold's cost that is Redis
receiving a script call and changing a counter, which no layout removes.
`--no-floor` skips it.

Needs valgrind (callgrind_control, callgrind_annotate) and redis-server.
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def resp(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.rd = self.sock.makefile("rb")

    def send(self, payload):
        self.sock.sendall(payload)

    def read(self):
        line = self.rd.readline()
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.rd.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    def call(self, *args):
        self.send(resp(args))
        return self.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sale:
    """One shard with stock to spare; calls of `batch` fresh requests."""

    def __init__(self, conn, sha, sku, old_layout):
        self.conn, self.sha, self.sku, self.n = conn, sha, sku, 0
        self.old_layout = old_layout
        tag = "%s#0" % sku
        self.keys = ["fg:{%s}:%s" % (tag, k) for k in ("stock", "books", "holds", "events", "wlopen", "keys")]
        conn.call("SET", self.keys[0], 10**9)
        conn.call("HSET", self.keys[1], "initial", 10**9, "held", 0, "sold", 0)

    def call(self, batch):
        # ARGV: hold_ms idem_ttl_ms record_ttl_ms, then per request: key rid
        # qty user fingerprint flags claim_record claim_body (lua/reserve.lua)
        args = ["600000", "86400000", "90000000"]
        if self.old_layout:
            return self.call_old(batch)
        for _ in range(batch):
            key, rid, user, fp, claim = self.request()
            # the claim body as the service writes it: <sku>\n<fp>\nk:<shards>\nt:<token>
            body = "%s\n%s\nk:1\nt:%s" % (self.sku, fp, rid[-32:])
            args += [key, rid, "1", user, fp, "3", claim, body]
        return resp(["EVALSHA", self.sha, len(self.keys)] + self.keys + args)

    def request(self):
        """A fresh request: key, rid, user, fingerprint, claim record."""
        self.n += 1
        i = self.n
        key = "k-%016x-%08d" % (i * 2654435761 % 2**64, i)
        rid = "%s.0.%032x" % (self.sku, i * 0x9E3779B97F4A7C15 % 2**128)
        user = "user-%07d" % i
        return key, rid, user, "1:" + user, "fg:{idem~%02d}:%s" % (i % 16, key)

    def call_old(self, batch):
        # reserve.lua before 1d3c1e8 (for comparison): KEYS the shard's six,
        # then per request its verdict, record and claim keys; ARGV hold_ms
        # idem_ttl_ms record_ttl_ms sku, then per request rid qty user
        # fingerprint mark_moved gate key claim_body
        keys, args = list(self.keys), ["600000", "86400000", "90000000", self.sku]
        prefix = self.keys[0][: -len("stock")]
        for _ in range(batch):
            key, rid, user, fp, claim = self.request()
            keys += [prefix + "idem:" + key, prefix + "r:" + rid, claim]
            args += [rid, "1", user, fp, "1", "1", key, "%s\n%s" % (self.sku, fp)]
        return resp(["EVALSHA", self.sha, len(keys)] + keys + args)


# The floor for "a hold": check the stock and DECRBY it, per request, nothing
# else (no idempotency, no record, no expiry, no outbox).
FLOOR_LUA = """
local stock, held = KEYS[1], 0
for i = 1, #ARGV do
  local qty = tonumber(ARGV[i])
  if tonumber(redis.call('GET', stock)) >= qty then
    redis.call('DECRBY', stock, qty)
    held = held + 1
  end
end
return held
"""


class Floor:
    """One stock counter with units to spare; calls of `batch` bare requests."""

    def __init__(self, conn, sha, sku):
        self.conn, self.sha = conn, sha
        self.stock = "fg:{%s#0}:stock" % sku
        conn.call("SET", self.stock, 10**9)

    def call(self, batch):
        return resp(["EVALSHA", self.sha, 1, self.stock] + ["1"] * batch)


def run_calls(conn, payloads, depth=4):
    inflight = sent = 0
    last = None
    while sent < len(payloads) or inflight:
        while inflight < depth and sent < len(payloads):
            conn.send(payloads[sent])
            sent += 1
            inflight += 1
        last = conn.read()
        inflight -= 1
    return last


def total_instructions(path):
    out = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True).stdout
    m = re.search(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", out, re.M)
    if not m:
        raise RuntimeError("no totals in %s" % path)
    return int(m.group(1).replace(",", ""))


def measure(lua_dir, batch, calls, old_layout=False, keep=None, floor=False):
    if floor:
        src = FLOOR_LUA
    else:
        src = open(os.path.join(lua_dir, "lib.lua")).read() + "\n" + open(os.path.join(lua_dir, "reserve.lua")).read()
    port = free_port()
    d = tempfile.mkdtemp(prefix="fg-redis-cg-")
    out = os.path.join(d, "cg.out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
         "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                conn = Conn(port)
                conn.call("PING")
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("redis-server under callgrind did not start")
                time.sleep(0.2)
        sha = conn.call("SCRIPT", "LOAD", src).decode()
        sale = Floor(conn, sha, "LT1-cg") if floor else Sale(conn, sha, "LT1-cg", old_layout)
        warm = [sale.call(batch) for _ in range(max(5, calls // 10))]
        measured = [sale.call(batch) for _ in range(calls)]
        reply = run_calls(conn, warm)
        if floor:
            if reply != str(batch).encode():
                raise RuntimeError("the floor script did not take every request: %r" % (reply,))
        else:
            held = reply[1:] if not old_layout else [r[0][:1] for r in reply]
            if not (isinstance(reply, list) and held and all(r == b"h" for r in held)):
                raise RuntimeError("reserve.lua did not hold every request: %r" % (reply,))
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        run_calls(conn, measured)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        dumps = sorted((f for f in os.listdir(d) if f.startswith("cg.out")), key=lambda f: os.path.getmtime(os.path.join(d, f)))
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        dump = os.path.join(d, dumps[-1])
        if keep:
            name = "redis-callgrind-floor-b%d.out" if floor else "redis-callgrind-b%d.out"
            shutil.copy(dump, os.path.join(keep, name % batch))
        return total_instructions(dump) / (batch * calls)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lua-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lua"))
    p.add_argument("--batch", type=int, action="append", help="requests per call (repeatable; default 1, 25, 64)")
    p.add_argument("--calls", type=int, default=0, help="measured calls per batch size (default: 5,000 holds' worth)")
    p.add_argument("--old-layout", action="store_true",
                   help="the arguments of reserve.lua before 1d3c1e8 (with --lua-dir holding that version)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the bare check-and-DECRBY floor (and the ratios to it)")
    p.add_argument("--keep", metavar="DIR",
                   help="copy each measured dump to DIR/redis-callgrind-b<B>.out, for callgrind_annotate")
    a = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "redis-server"):
        if not shutil.which(tool):
            sys.exit("%s is not on the PATH (make bench-redis-instructions installs valgrind as root)" % tool)
    print("redis-server instructions per hold of reserve.lua (callgrind, user space; every request a new hold with its claim)")
    if not a.no_floor:
        print("  floor: a bare check-and-DECRBY script per request at the same batch size (FLOOR_LUA)")
    for b in a.batch or [1, 25, 64]:
        calls = a.calls or max(20, 5000 // b)
        per = measure(a.lua_dir, b, calls, a.old_layout, a.keep)
        line = "  batch %3d  %8.0f instructions per hold  (%d calls)" % (b, per, calls)
        if not a.no_floor:
            base = measure(a.lua_dir, b, calls, keep=a.keep, floor=True)
            line += "  floor %7.0f  ratio %5.2fx" % (base, per / base)
        print(line, flush=True)


if __name__ == "__main__":
    main()
