# syntax=docker/dockerfile:1
#
# The ssegate image: a release build of the gateway on a slim Debian runtime.
#
#   docker build -t ssegate .
#   docker run --rm -p 8080:8080 -p 9090:9090 ssegate        # one node, in-memory broker
#   docker compose up                                         # Redis + 3 nodes + nginx
#
# Every setting is an SSEGATE_* variable (docs/configuration.md); the image only sets the
# listeners to all interfaces and logs to JSON.

# --- build -----------------------------------------------------------------------------
# The toolchain the project is developed with; the workspace's rust-version is the floor.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# The whole workspace: Cargo.lock and every member's manifest must be there for --locked,
# and .dockerignore keeps target/, .git/ and node_modules/ out of the context.
COPY . .

# --locked: build exactly the dependency versions of Cargo.lock, or fail.
# The cache mounts keep the crates.io download and the incremental target directory
# between builds (BuildKit); the binary is copied out of the cached target directory
# within the same step because the mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ssegate \
    && install -D -m 0755 target/release/ssegate /out/ssegate

# --- runtime ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# curl is only for the HEALTHCHECK below (and for poking at a node from inside the
# container); nothing else is installed. Versions come from the Debian release the tag
# pins, which is what gets security updates, hence no per-package pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify the user without
# looking it up, and volumes can be chowned to it. No home, no shell.
RUN groupadd --system --gid 10001 ssegate \
    && useradd --system --uid 10001 --gid ssegate --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ssegate

COPY --from=build /out/ssegate /usr/local/bin/ssegate

# The public listener (API, streams, demo page) and the admin listener (health, stats).
ENV SSEGATE_LISTEN=0.0.0.0:8080 \
    SSEGATE_ADMIN_LISTEN=0.0.0.0:9090 \
    SSEGATE_LOG_FORMAT=json
EXPOSE 8080 9090

USER 10001:10001

# SIGTERM starts the drain (readiness goes 503, streams are closed spread over
# SSEGATE_DRAIN_WINDOW with a retry: hint). Give the container at least the drain window
# plus a few seconds to stop: "docker stop -t 15", "stop_grace_period" in compose,
# terminationGracePeriodSeconds in Kubernetes.
STOPSIGNAL SIGTERM

# Liveness: the process answers HTTP. (/readyz would also turn unhealthy while Redis is
# unreachable, which is not a reason to restart a node.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]

ENTRYPOINT ["/usr/local/bin/ssegate"]
