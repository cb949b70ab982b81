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

Redis Cluster (`--cluster N`, N >= 3): the same holds as flashgate makes them
on a cluster, counted over all N masters and printed next to one server's in
the same run. N `redis-server --cluster-enabled yes` masters under callgrind,
the 16384 slots split evenly (CLUSTER ADDSLOTSRANGE, MEET), one shard per
master (its tag chosen by CRC16 so the master serves it), the requests dealt
round-robin over the shards. A key's claim cannot ride in reserve.lua there
(its bucket's slot is another): each request first goes through claim.lua
(SET NX GET, a call of up to B keys of one bucket `claim~H`, sent to the
bucket's master), then reserve.lua with the claim body '!' ("claim.lua has
just made the key's claim new"), which so writes the hold with NX without
reading the key's verdicts (data layout 5; before it, an empty claim and
two GETs per hold). `--apart` measures that request mix on one
server too (claims apart, no cluster), to tell the claim's separate call
from the cluster's own cost.

    python3 bench/redis_instructions.py --batch 25 --cluster 3 --apart

Two options for the cluster, measured but not what flashgate does:
`--claims-per-master` (one claim.lua call per master and round instead of one
per bucket) and `--colocated` (every claim in the slot of the shard its
request goes to first, made inside reserve.lua with the hold's record riding
in it, as on one server; what a layout whose claims share their first shard's
slot, or master, would cost).

    python3 bench/redis_instructions.py --batch 25 --no-floor --cluster 3 --claims-per-master --colocated

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


# `--claims-per-master` (an option measured, not what flashgate does): one
# claim call per master instead of per bucket. Redis 7.0 lets a script with
# no shebang touch keys of other slots on its own node; the call declares
# its first claim's key (for routing) and passes every claim as an argument.
PER_MASTER_CLAIM = """local replies = {}
local n = (#ARGV - 1) / 2
for i = 1, n do
  replies[i] = redis.call('SET', ARGV[2 * i], ARGV[2 * i + 1], 'NX', 'GET', 'PX', ARGV[1])
end
return replies"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sale:
    """One shard with stock to spare; calls of `batch` fresh requests."""

    def __init__(self, conn, sha, sku, old_layout, tag=None, start=0, claims_in_tag=False):
        self.conn, self.sha, self.sku, self.n = conn, sha, sku, start
        self.old_layout = old_layout
        tag = tag or "%s#0" % sku
        # (the co-located option: the claim in the shard's own slot)
        self.claim_tag = tag if claims_in_tag else None
        self.keys = ["fg:{%s}:%s" % (tag, k) for k in ("stock", "books", "holds", "events", "wlopen", "keys")]
        conn.call("SET", self.keys[0], 10**9)
        conn.call("HSET", self.keys[1], "initial", 10**9, "held", 0, "sold", 0)

    def call(self, batch, apart=None):
        """One reserve.lua call of `batch` fresh requests. With `apart` (a
        list), each request's claim is not made in the call but appended to
        it as (bucket, claim record, claim body), for claim.lua."""
        # ARGV: hold_ms idem_ttl_ms record_ttl_ms window ('' = none), then per
        # request: key rid qty user fingerprint flags claim_record claim_body
        # (lua/reserve.lua)
        args = ["600000", "86400000", "90000000", WINDOW[0]]
        if self.old_layout:
            return self.call_old(batch)
        for _ in range(batch):
            key, rid, user, fp, claim = self.request()
            # the claim body as the service writes it: <sku>\n<fp>\nk:<shards>\nt:<token>
            body = "%s\n%s\nk:1\nt:%s" % (self.sku, fp, rid[-32:])
            if apart is None:
                args += [key, rid, "1", user, "3", claim, body]
            else:
                apart.append((int(rid[-32], 16), claim, body))
                args += [key, rid, "1", user, "3", "", "!"]
        return resp(["EVALSHA", self.sha, len(self.keys)] + self.keys + args)

    def request(self):
        """A fresh request: key, rid, user, fingerprint, claim record."""
        self.n += 1
        i = self.n
        key = "k-%016x-%08d" % (i * 2654435761 % 2**64, i)
        rid = "%s.0.%016x%016x" % (self.sku, i * 0x9E3779B97F4A7C15 % 2**64, i)
        user = "user-%07d" % i
        # the claim the token names (data layout 6): its first 16 hex digits,
        # in the bucket of the first (src/inventory/keys.rs, ClaimHasher)
        tok = rid[-32:]
        if self.claim_tag:
            return key, rid, user, "1:" + user, "fg:{%s}:c:%s" % (self.claim_tag, tok[:16])
        return key, rid, user, "1:" + user, "fg:{claim~%s}:%s" % (tok[0], tok[:16])

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


def crc16(data):
    """CRC16-XMODEM, Redis Cluster's key slot hash."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot_of(tag):
    return crc16(tag.encode()) % 16384


def free_cluster_port():
    """A free port whose cluster bus port (+10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


def start_redis(extra=()):
    """A redis-server under callgrind on a free port: (proc, port, dir, conn)."""
    port = free_cluster_port() if extra else free_port()
    d = tempfile.mkdtemp(prefix="fg-redis-cg-")
    out = os.path.join(d, "cg.out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
         "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", d] + list(extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while True:
        try:
            conn = Conn(port)
            conn.call("PING")
            return proc, port, d, conn
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError("redis-server under callgrind did not start (port %d)" % port)
            time.sleep(0.2)


def stop_redis(proc, d):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(d, ignore_errors=True)


def last_dump(d):
    dumps = sorted((f for f in os.listdir(d) if f.startswith("cg.out")), key=lambda f: os.path.getmtime(os.path.join(d, f)))
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    return os.path.join(d, dumps[-1])


def measure_apart(lua_dir, batch, calls, masters, keep=None, per_master=False, colocated=False):
    """Instructions per hold summed over every server, each request's claim
    made apart by claim.lua (as flashgate does on a cluster). masters == 0:
    one plain server; else a cluster of that many masters. `colocated` (an
    option measured, not what flashgate does): every claim in its shard's own
    slot, so it is made inside reserve.lua with the hold's record riding in
    it, as on one server: the cost of a layout whose claims share a slot
    with the shard the request is sent to first."""
    lib = open(os.path.join(lua_dir, "lib.lua")).read()
    if not colocated:
        # (on a cluster no record rides in a claim: src/inventory/scripts.rs)
        lib = lib.replace("local CLAIM_RECORDS = true", "local CLAIM_RECORDS = false", 1)
    lib += "\n"
    reserve_src = lib + open(os.path.join(lua_dir, "reserve.lua")).read()
    # (claim.lua without the prelude, as the service loads it)
    claim_src = open(os.path.join(lua_dir, "claim.lua")).read()
    n = max(masters, 1)
    nodes = []
    try:
        for _ in range(n):
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "60000") if masters else ()
            nodes.append(start_redis(extra))
        ranges = []
        for i in range(n):
            lo, hi = 16384 * i // n, 16384 * (i + 1) // n - 1
            ranges.append((lo, hi))
        if masters:
            for (_, _, _, conn), (lo, hi) in zip(nodes, ranges):
                conn.call("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            for _, port, _, _ in nodes[1:]:
                nodes[0][3].call("CLUSTER", "MEET", "127.0.0.1", port)
            deadline = time.time() + 120
            while True:
                infos = [c.call("CLUSTER", "INFO").decode() for _, _, _, c in nodes]
                if all("cluster_state:ok" in i and "cluster_known_nodes:%d" % n in i for i in infos):
                    break
                if time.time() > deadline:
                    raise RuntimeError("the cluster did not come up: %r" % infos)
                time.sleep(0.5)

        def owner(tag):
            if not masters:
                return 0
            s = slot_of(tag)
            return next(i for i, (lo, hi) in enumerate(ranges) if lo <= s <= hi)

        shas = []
        for _, _, _, conn in nodes:
            shas.append((conn.call("SCRIPT", "LOAD", reserve_src).decode(),
                         conn.call("SCRIPT", "LOAD", PER_MASTER_CLAIM if per_master else claim_src).decode()))
        # one shard per master, its tag served by that master
        sales = []
        for i in range(n):
            j = 0
            while owner("LT1-cg#%d" % j) != i:
                j += 1
            tag = "LT1-cg#%d" % j
            sales.append((i, Sale(nodes[i][3], shas[i][0], "LT1-cg", False, tag=tag, start=10**7 * i,
                                  claims_in_tag=colocated)))

        def round_payloads(count):
            """`count` reserve calls per shard and the claim calls before them:
            [(node, payload)] in the order sent."""
            out = []
            for _ in range(count):
                # a round: one reserve call per shard, B requests each; their
                # claims first, one claim.lua call per bucket (the requests
                # of the round in flight together, as flashgate's bucket
                # lanes would batch them: ~N*B/16 keys per call)
                apart, calls = [], []
                for i, sale in sales:
                    calls.append((i, sale.call(batch, None if colocated else apart), True))
                buckets = {}
                for bucket, record, body in apart:
                    buckets.setdefault(bucket, []).append((record, body))
                per_node = {}
                for bucket, claims in sorted(buckets.items()):
                    o = owner("claim~%x" % bucket)
                    if per_master:
                        per_node.setdefault(o, []).extend(claims)
                        continue
                    keys = [r for r, _ in claims]
                    out.append((o, resp(["EVALSHA", shas[o][1], len(keys)] + keys + ["86400000"] + [b for _, b in claims]), False))
                for o, claims in sorted(per_node.items()):
                    args = ["86400000"]
                    for r, b in claims:
                        args += [r, b]
                    out.append((o, resp(["EVALSHA", shas[o][1], 1, claims[0][0]] + args), False))
                out += calls
            return out

        def run(payloads):
            """Per node its payloads in order, 4 in flight (as run_calls);
            every reserve.lua reply."""
            per = [[] for _ in range(n)]
            for o, p, is_reserve in payloads:
                per[o].append((p, is_reserve))
            held = []
            for o in range(n):
                conn, todo, kinds, sent = nodes[o][3], per[o], [], 0
                while sent < len(todo) or kinds:
                    while len(kinds) < 4 and sent < len(todo):
                        conn.send(todo[sent][0])
                        kinds.append(todo[sent][1])
                        sent += 1
                    reply = conn.read()
                    if kinds.pop(0):
                        held.append(reply)
                    elif not isinstance(reply, list) or any(r is not None for r in reply):
                        raise RuntimeError("a claim call did not claim every key: %r" % (reply,))
            return held

        warm = round_payloads(max(5, calls // 10))
        measured = round_payloads(calls)
        run(warm)
        for proc, _, _, _ in nodes:
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        for reply in run(measured):
            if not (isinstance(reply, list) and reply[1:] and all(r == b"h" for r in reply[1:])):
                raise RuntimeError("reserve.lua did not hold every request: %r" % (reply,))
        total = cron = 0
        for k, (proc, _, d, _) in enumerate(nodes):
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
            dump = last_dump(d)
            if keep:
                shutil.copy(dump, os.path.join(keep, "redis-callgrind-%s%d-b%d-node%d.out" % (
                    "cluster" if masters else "apart", n, batch, k)))
            total += total_instructions(dump)
            cron += cron_instructions(dump)
        return total / (batch * calls * n), cron / (batch * calls * n)
    finally:
        for proc, _, d, _ in nodes:
            stop_redis(proc, d)


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


def cron_instructions(path):
    """serverCron's inclusive count: timer-driven (10 times a second, active
    expiry and rehashing among it), so its share grows with the wall time of
    a run under valgrind (~50x slower), not with the holds."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                         capture_output=True, text=True).stdout
    m = re.search(r"^\s*([\d,]+)\s+\([\d. ]+%\)\s+\S*:serverCron ", out, re.M)
    return int(m.group(1).replace(",", "")) if m else 0


def measure(lua_dir, batch, calls, old_layout=False, keep=None, floor=False, with_cron=False):
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
        if with_cron:
            return total_instructions(dump) / (batch * calls), cron_instructions(dump) / (batch * calls)
        return total_instructions(dump) / (batch * calls)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)


# ARGV[4] of every call: '' (no sale window), or with --window one that
# opened an hour before (every call reads TIME and compares; every request
# still holds): docs/fair-draw.md
WINDOW = [""]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lua-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lua"))
    p.add_argument("--batch", type=int, action="append", help="requests per call (repeatable; default 1, 25, 64)")
    p.add_argument("--calls", type=int, default=0, help="measured calls per batch size (default: 5,000 holds' worth)")
    p.add_argument("--old-layout", action="store_true",
                   help="the arguments of reserve.lua before 1d3c1e8 (with --lua-dir holding that version)")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the bare check-and-DECRBY floor (and the ratios to it)")
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="also measure on a cluster of N >= 3 masters, claims made apart by claim.lua")
    p.add_argument("--apart", action="store_true",
                   help="also measure one server with the claims made apart (claim.lua), as on a cluster")
    p.add_argument("--keep", metavar="DIR",
                   help="copy each measured dump to DIR/redis-callgrind-b<B>.out, for callgrind_annotate")
    p.add_argument("--claims-per-master", action="store_true",
                   help="with --cluster: also one claim call per master (an option measured, not what flashgate does)")
    p.add_argument("--colocated", action="store_true",
                   help="with --cluster: also every claim in its shard's slot, riding as on one server "
                        "(an option measured, not what flashgate does)")
    p.add_argument("--window", action="store_true",
                   help="a SKU with a sale window, open since an hour (reserve.lua's ARGV[4])")
    a = p.parse_args()
    if a.window:
        WINDOW[0] = "%d|" % (int(time.time() * 1000) - 3600 * 1000)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate", "redis-server"):
        if not shutil.which(tool):
            sys.exit("%s is not on the PATH (make bench-redis-instructions installs valgrind as root)" % tool)
    print("redis-server instructions per hold of reserve.lua (callgrind, user space; every request a new hold with its claim)")
    if not a.no_floor:
        print("  floor: a bare check-and-DECRBY script per request at the same batch size (FLOOR_LUA)")
    for b in a.batch or [1, 25, 64]:
        calls = a.calls or max(20, 5000 // b)
        per, per_cron = measure(a.lua_dir, b, calls, a.old_layout, a.keep, with_cron=True)
        line = "  batch %3d  %8.0f instructions per hold  (%d calls)" % (b, per, calls)
        if not a.no_floor:
            base = measure(a.lua_dir, b, calls, keep=a.keep, floor=True)
            line += "  floor %7.0f  ratio %5.2fx" % (base, per / base)
        print(line, flush=True)
        if a.apart or a.cluster:
            # without serverCron: its share follows the run's wall time under
            # valgrind, and N servers run N crons (cron_instructions)
            net = per - per_cron
            print("            %8.0f per hold without serverCron (%.0f)" % (net, per_cron), flush=True)
        if a.apart:
            apart, cron = measure_apart(a.lua_dir, b, calls, 0, a.keep)
            print("            %8.0f per hold on one server, claims apart (claim.lua + reserve.lua); "
                  "%.0f without serverCron (%.2fx)" % (apart, apart - cron, (apart - cron) / net), flush=True)
        if a.cluster:
            if a.cluster < 3:
                sys.exit("--cluster needs 3 masters or more")
            per_c, cron = measure_apart(a.lua_dir, b, max(1, calls // a.cluster), a.cluster, a.keep)
            print("            %8.0f per hold over %d cluster masters, claims apart; "
                  "%.0f without serverCron (%.2fx one server)" % (per_c, a.cluster, per_c - cron, (per_c - cron) / net),
                  flush=True)
            if a.claims_per_master:
                per_m, cron = measure_apart(a.lua_dir, b, max(1, calls // a.cluster), a.cluster, a.keep, per_master=True)
                print("            %8.0f per hold over %d cluster masters, one claim call per master; "
                      "%.0f without serverCron (%.2fx one server)" % (per_m, a.cluster, per_m - cron, (per_m - cron) / net),
                      flush=True)
            if a.colocated:
                per_o, cron = measure_apart(a.lua_dir, b, max(1, calls // a.cluster), a.cluster, a.keep, colocated=True)
                print("            %8.0f per hold over %d cluster masters, claims in the shard's slot (riding); "
                      "%.0f without serverCron (%.2fx one server)" % (per_o, a.cluster, per_o - cron, (per_o - cron) / net),
                      flush=True)


if __name__ == "__main__":
    main()
