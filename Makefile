# Convenience aliases; the README's quick start calls the scripts directly.
.PHONY: run test lint

run:
	scripts/run.sh

test:
	scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# A simulated flash sale (loadtest/, see bench/README.md): builds both binaries
# in release, starts its own redis-server (temp dir, no persistence) and
# flashgate on free 127.0.0.1 ports, runs the sale and the baselines, stops
# both and prints the table. Results go to bench-results/<run>/.
# Smaller run: make bench BENCH_ARGS="--buyers 20000"
# On a 3-master Redis Cluster it starts itself: make bench BENCH_ARGS="--cluster-masters 3"
BENCH_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
BENCH_ARGS ?=
.PHONY: bench
bench:
	cargo build --release -p flashgate -p flashgate-loadtest
	$(BENCH_TARGET_DIR)/release/flashgate-loadtest --spawn \
		--flashgate-bin $(BENCH_TARGET_DIR)/release/flashgate \
		--lua-dir lua --out-dir bench-results $(BENCH_ARGS)

# The hostile crowd (issue 17, bench/README.md): the sale with bots (fresh
# keys and user ids), no-op release loopers, waitlist poisoners and a second
# storefront alongside it; prints each figure next to its target. Fails only
# on wrong books or an oversell (the rest are benchmarks). ~40 s on 2 cores.
# The official bytes figure: make bench-hostile HOSTILE_REFUSED=100000
HOSTILE_REFUSED ?= 20000
HOSTILE_ARGS ?= --buyers 5000 --stock 200 --shards 8 --hold-seconds 20
.PHONY: bench-hostile
bench-hostile:
	cargo build --release -p flashgate -p flashgate-loadtest
	$(BENCH_TARGET_DIR)/release/flashgate-loadtest --spawn --scenario hostile \
		--flashgate-bin $(BENCH_TARGET_DIR)/release/flashgate \
		--lua-dir lua --out-dir bench-results \
		--hostile-refused $(HOSTILE_REFUSED) $(HOSTILE_ARGS) $(BENCH_ARGS)

# flashgate's CPU instructions per answer (/healthz, sold out, new hold) under
# valgrind's callgrind: repeatable where rates on a shared machine are not,
# the figure for A/B comparisons of the request path (bench/README.md).
# Installs valgrind with apt-get when missing and run as root.
INSTRUCTIONS_N ?= 5000
.PHONY: bench-instructions
bench-instructions:
	@command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y valgrind; } || { echo "install valgrind" >&2; exit 1; }
	cargo build --release -p flashgate -p flashgate-loadtest
	$(BENCH_TARGET_DIR)/release/flashgate-loadtest --instructions $(INSTRUCTIONS_N) \
		--flashgate-bin $(BENCH_TARGET_DIR)/release/flashgate --out-dir bench-results

# Redis's own instructions per hold of lua/reserve.lua (redis-server under
# callgrind, batches of 1, 25 and 64 fresh requests per call): the figure for
# A/B comparisons of the Lua side (bench/README.md). Installs valgrind with
# apt-get when missing and run as root.
.PHONY: bench-redis-instructions
bench-redis-instructions:
	@command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y valgrind; } || { echo "install valgrind" >&2; exit 1; }
	python3 bench/redis_instructions.py --lua-dir lua

# Import circles among src/'s modules (docs/design.md, "Layout"): prints each
# cycle with the lines that make its arrows; exits 1 while any is left.
.PHONY: cycles
cycles:
	python3 scripts/module_cycles.py

# Shards and stock added mid-sale (issue 24, bench/notes/2026-12-04-reshard.md):
# a SKU on 2 shards, a forced preload to 4 with more units while holds are
# out, every first-wave key resent inside and after the 2 s layout cache,
# waitlist joins resent before and after promotion; then books exact, <= 1
# reservation per Idempotency-Key, no unit stuck behind the gates, and
# `flashgate reconcile` clean against a ledger in its own PostgreSQL.
# Needs PostgreSQL's server binaries (initdb). About a minute on 2 cores.
RESHARD_ARGS ?= --buyers 400 --stock 120 --shards 2 --reshard-to 4 --reshard-add 60 \
	--reshard-waitlisters 20 --hold-seconds 20 --connections 32 --retry-share 0.3
.PHONY: bench-reshard
bench-reshard:
	cargo build --release -p flashgate -p flashgate-loadtest
	$(BENCH_TARGET_DIR)/release/flashgate-loadtest --spawn --scenario reshard \
		--flashgate-bin $(BENCH_TARGET_DIR)/release/flashgate \
		--lua-dir lua --out-dir bench-results $(RESHARD_ARGS) $(BENCH_ARGS)

# The cart mix (issue 22, bench/README.md): 3 SKUs, half the buyers with carts
# of 2-3 lines; the books per SKU and every whole cart checked after. ~1 min.
CARTS_ARGS ?= --buyers 5000 --stock 1000 --shards 4 --cart-skus 3 --cart-mix 0.5 \
	--hold-seconds 10 --connections 64
.PHONY: bench-carts
bench-carts:
	cargo build --release -p flashgate -p flashgate-loadtest
	$(BENCH_TARGET_DIR)/release/flashgate-loadtest --spawn --scenario carts \
		--flashgate-bin $(BENCH_TARGET_DIR)/release/flashgate \
		--out-dir bench-results $(CARTS_ARGS) $(BENCH_ARGS)

# The fault harness (issue 18, faults/, docs/faults.md): a sale on a
# single-node Redis (AOF everysec) or a 3-master cluster with replicas, +
# PostgreSQL + two flashgate instances + a ledger writer. One run per fault,
# each recorded as faults-results/<fault>-<time>/history.jsonl + final.json
# + timeline.svg and judged by flashgate-checker (checker/) when it is built;
# exits 1 on any failed verdict. Uses the debug flashgate (FAULTS_BIN for
# another). make faults: each fault on its own for 60 s, then mixed and
# cluster-mixed (~15 min on 2 cores). make faults-short (CI, ~3 min): every
# single-node fault in turn in one 60 s run, then the cluster's master
# failover and slot migration in turn in one 45 s run.
FAULTS_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
FAULTS_BIN ?= $(FAULTS_TARGET_DIR)/debug/flashgate
FAULTS_ARGS ?=
FAULTS_PACKAGES = -p flashgate -p flashgate-faults $(if $(wildcard checker/Cargo.toml),-p flashgate-checker)
.PHONY: faults faults-short
faults:
	cargo build $(FAULTS_PACKAGES)
	$(FAULTS_TARGET_DIR)/debug/flashgate-faults --flashgate-bin $(FAULTS_BIN) \
		--faults all --seconds 60 --out-dir faults-results $(FAULTS_ARGS)

faults-short:
	cargo build $(FAULTS_PACKAGES)
	$(FAULTS_TARGET_DIR)/debug/flashgate-faults --flashgate-bin $(FAULTS_BIN) \
		--faults mixed --seconds 60 --hold-seconds 3 --out-dir faults-results $(FAULTS_ARGS)
	$(FAULTS_TARGET_DIR)/debug/flashgate-faults --flashgate-bin $(FAULTS_BIN) \
		--faults cluster-mixed --seconds 45 --hold-seconds 3 --out-dir faults-results $(FAULTS_ARGS)

# The stock document under a poll storm (issue 23,
# bench/notes/2026-12-04-stock-document.md): wrk on /healthz and on
# GET /v1/skus/{sku} at 4 and 64 shards in the same run, and Redis commands
# per GET. Needs wrk (apt-get install -y wrk). ~1 min.
.PHONY: bench-stock-doc
bench-stock-doc:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y wrk; } || { echo "install wrk" >&2; exit 1; }
	cargo build --release -p flashgate
	FLASHGATE_BIN=$(BENCH_TARGET_DIR)/release/flashgate bench/stock_document.sh

# Open loop (issue 23, bench/notes/2026-12-04-open-loop.md): the closed-loop
# capacity of holds and of sold-out answers, then each offered on a fixed
# schedule at 25/50/75 % of it; p50/p99/p99.9 from the intended send time.
# One rate instead: make bench-open OPEN_ARGS="--rate 2000". ~1 min.
# The generator on a CPU of its own, the service on the others (taskset; the
# nearest to a generator on another machine): make bench-open OPEN_ARGS=--pin
OPEN_ARGS ?=
.PHONY: bench-open
bench-open:
	cargo build --release -p flashgate -p flashgate-loadtest
	$(BENCH_TARGET_DIR)/release/flashgate-loadtest --spawn --scenario open-loop \
		--flashgate-bin $(BENCH_TARGET_DIR)/release/flashgate \
		--connections 64 --hold-seconds 600 --out-dir bench-results $(OPEN_ARGS) $(BENCH_ARGS)
