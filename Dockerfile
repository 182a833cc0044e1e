# tenantgate: multi-stage build, small non-root runtime image.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tenantgate && strip target/release/tenantgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/tenantgate --create-home tenantgate
COPY --from=build /src/target/release/tenantgate /usr/local/bin/tenantgate
COPY config/ /etc/tenantgate/
USER tenantgate
WORKDIR /var/lib/tenantgate
EXPOSE 8080 8081 8082 9090
ENTRYPOINT ["/usr/local/bin/tenantgate"]
CMD ["up", "--config", "/etc/tenantgate/tenantgate.toml"]
