# The kt gateway image: a release build in a Rust image, then a small Debian
# runtime with only the binary, the OS roots (kt always trusts them for
# upstream TLS) and curl for health checks. Runs as an unprivileged user.
#
#   docker build -t keeptrusts/kt .
#   docker run -p 41002:41002 -v kt-data:/var/lib/kt keeptrusts/kt
#
# State (the CA under certs/, the audit log spool under events/, keys.json)
# lives in /var/lib/kt: mount a volume there. Hosted mode (shared PostgreSQL
# and Redis) is in deploy/docker-compose.yml and deploy/kubernetes/.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin kt \
    && strip target/release/kt

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kt \
    && useradd --system --uid 10001 --gid kt --home-dir /var/lib/kt --create-home kt \
    && chmod 0700 /var/lib/kt
COPY --from=build /src/target/release/kt /usr/local/bin/kt
ENV KEEPTRUSTS_HOME=/var/lib/kt
USER 10001:10001
WORKDIR /var/lib/kt
VOLUME ["/var/lib/kt"]
EXPOSE 41002
# Off loopback, access keys are required by default: create them with
# `docker exec CONTAINER kt keys create --user NAME` (or against the shared
# storage in hosted mode).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:41002/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["kt"]
CMD ["gateway", "run", "--listen", "0.0.0.0:41002"]
