# syntax=docker/dockerfile:1
# tenantgate: multi-stage build, small non-root runtime image.
#
#   docker build -t tenantgate .
#
# Build arguments:
#   BUILDER_IMAGE   Rust toolchain image of the build stage (default rust:1.95-bookworm)
#   RUNTIME_IMAGE   Debian bookworm image of the runtime stage (default debian:bookworm-slim)
#   BINARY_SOURCE   "build" (default): compile in the build stage; "prebuilt": take the
#                   binary at PREBUILT in the build context instead (no toolchain needed,
#                   e.g. a binary from `cargo build --release` on a bookworm-compatible
#                   host; deploy/smoke.sh builds the image this way where no registry
#                   image is reachable)
#   PREBUILT        path of that binary in the build context (default .prebuilt/tenantgate)
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARY_SOURCE=build

FROM ${BUILDER_IMAGE} AS build
# Pingora's zlib (libz-ng-sys) builds with cmake. Versions come from the bookworm
# snapshot of the base image; pinning them would break as soon as Debian updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tenantgate \
    && strip target/release/tenantgate \
    && install -D -m 0755 target/release/tenantgate /out/tenantgate

FROM ${RUNTIME_IMAGE} AS prebuilt
ARG PREBUILT=.prebuilt/tenantgate
COPY ${PREBUILT} /out/tenantgate

# The stage the binary comes from: `build` or `prebuilt` (unused stages are skipped).
# hadolint ignore=DL3006
FROM ${BINARY_SOURCE} AS binary

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="tenantgate" \
      org.opencontainers.image.description="Multi-tenancy enforcing edge proxy on Pingora" \
      org.opencontainers.image.licenses="Apache-2.0"
# ca-certificates: HTTPS JWKS fetches; curl: container health checks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/tenantgate --create-home tenantgate \
    && install -d -o tenantgate -g tenantgate -m 0750 /var/lib/tenantgate/data
COPY --from=binary --chmod=0755 /out/tenantgate /usr/local/bin/tenantgate
COPY config/ /etc/tenantgate/
USER 10001:10001
WORKDIR /var/lib/tenantgate
# The data directory (SQLite file of `up`, secret.key, the metering spool) is a volume
# so the root filesystem can be read-only.
VOLUME ["/var/lib/tenantgate/data"]
EXPOSE 8080 8081 8082 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tenantgate"]
CMD ["up", "--config", "/etc/tenantgate/tenantgate.toml"]
