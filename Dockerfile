# chatgate: multi-stage build.
#
#   docker build -t chatgate .
#   docker run --rm -p 8000:8000 -v chatgate-data:/data -e OPENAI_API_KEY=sk-... chatgate
#   docker run --rm -p 8000:8000 chatgate --mock-upstream      # offline, no key
#
# Arguments after the image name go to chatgate (`serve`, `purge`,
# `check-config`, `--mock-upstream`).

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against stub sources, so this layer is reused until a
# manifest or Cargo.lock changes. Every workspace member and every target the
# root manifest declares explicitly must exist for cargo to load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY chatcore/Cargo.toml chatcore/
COPY chatgate/Cargo.toml chatgate/
COPY chatmock/Cargo.toml chatmock/
RUN mkdir -p chatcore/src chatgate/src chatmock/src examples/loadtest benches \
 && touch chatcore/src/lib.rs chatgate/src/lib.rs chatmock/src/lib.rs \
 && echo 'fn main() {}' > chatgate/src/main.rs \
 && echo 'fn main() {}' > examples/loadtest/main.rs \
 && echo 'fn main() {}' > benches/core.rs \
 && cargo build --release --locked -p chatgate \
 && rm -rf chatcore/src chatgate/src chatmock/src examples benches

# The real sources. Touch the crate roots so cargo rebuilds the workspace
# crates rather than trusting the stubs' fingerprints (COPY keeps old mtimes).
COPY . .
RUN touch chatcore/src/lib.rs chatgate/src/lib.rs chatgate/src/main.rs chatmock/src/lib.rs \
 && cargo build --release --locked -p chatgate \
 && cp target/release/chatgate /usr/local/bin/chatgate

# ---- run --------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 chatgate \
 && useradd --system --uid 10001 --gid chatgate --home-dir /data --shell /usr/sbin/nologin chatgate \
 && mkdir -p /data /etc/chatgate \
 && chown chatgate:chatgate /data

COPY --from=builder /usr/local/bin/chatgate /usr/local/bin/chatgate
COPY config.toml /etc/chatgate/config.toml

# The SQLite file (with its -wal and -shm) and app.log live in the volume.
# A .env file in /data is read for OPENAI_API_KEY / SECRET_KEY, though
# `-e OPENAI_API_KEY=...` is the usual way in a container.
ENV CHATGATE_SERVER__BIND=0.0.0.0:8000 \
    CHATGATE_STORAGE__PATH=/data/chatgate.db \
    CHATGATE_LOG__FILE=/data/app.log
WORKDIR /data
VOLUME ["/data"]
USER chatgate
EXPOSE 8000

# No HEALTHCHECK: the slim image has no HTTP client. Probe GET /healthz
# (process up) and GET /readyz (storage reachable) from your orchestrator.
# chatgate drains for server.shutdown_grace (10s) on SIGTERM; give
# `docker stop` a little longer than that (e.g. `docker stop -t 15`).
ENTRYPOINT ["chatgate", "--config", "/etc/chatgate/config.toml"]
