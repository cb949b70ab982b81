# syntax=docker/dockerfile:1
# flashgate container image. Build: docker build -t flashgate . (BuildKit, the default
# builder, is needed for the cache mounts). Run: see docker-compose.yml.

FROM rust:1.95-bookworm AS build
WORKDIR /build
# Only what the build reads: the workspace manifests (loadtest, testkit, checker and faults
# are workspace members, so cargo needs their manifests to load the workspace, and --locked
# checks Cargo.lock covers them), the sources, and lua/ + config/ + openapi.yaml, which
# are read at compile time (include_str!). tests/it/observability_files.rs checks this
# list against the tree.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY lua ./lua
COPY config ./config
COPY loadtest ./loadtest
COPY testkit ./testkit
COPY checker ./checker
COPY faults ./faults
COPY bench ./bench
COPY migrations ./migrations
COPY openapi.yaml ./
# The registry and target dir live in cache mounts, so a source change rebuilds only
# flashgate itself; the binary is copied out because the mount is not in the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked -p flashgate \
    && install -D -m 0755 target/release/flashgate /out/flashgate

FROM debian:bookworm-slim
RUN useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin flashgate
COPY --from=build /out/flashgate /usr/local/bin/flashgate
# No config file in the image: built-in defaults, overridden by FLASHGATE_* variables
# and flags (see config/flashgate.toml for the keys). Lua scripts are compiled in.
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Liveness over bash's /dev/tcp instead of installing curl: bookworm-slim already has
# bash, and curl would add libcurl and a dozen libraries (~10 MB) to the image for
# one GET. Healthy = the status line of GET /healthz says 200; --timeout bounds a hang.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q '^HTTP/1\\.[01] 200 '"]
CMD ["flashgate", "serve", "--listen", "0.0.0.0:8080"]
