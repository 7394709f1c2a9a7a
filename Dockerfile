# syntax=docker/dockerfile:1
# Build:  docker build --build-arg GIT_REVISION=$(git rev-parse --short=12 HEAD) -t opswat-license-exporter .
# Run:    docker run --rm -p 9877:9877 opswat-license-exporter --demo --web.listen-address 0.0.0.0:9877
#         docker run --rm -p 9877:9877 -v $PWD/config.yaml:/etc/opswat-license-exporter/config.yaml:ro \
#           -v /run/secrets/opswat:/run/secrets:ro opswat-license-exporter

# --- build: a static (musl) binary on the official Rust image
FROM rust:1.88-alpine AS builder
RUN apk add --no-cache musl-dev build-base cmake perl
ARG GIT_REVISION=unknown
ENV GIT_REVISION=$GIT_REVISION
WORKDIR /src
# Dependency cache layer: only the manifests, with stub sources.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && : > src/lib.rs \
    && echo 'fn main() {}' > benches/scrape.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && ./target/release/opswat-license-exporter --version

# --- runtime: nothing but the binary and CA certificates
FROM scratch
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=builder /src/target/release/opswat-license-exporter /usr/local/bin/opswat-license-exporter
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 9877
LABEL org.opencontainers.image.title="opswat-license-exporter" \
      org.opencontainers.image.description="Prometheus exporter for My OPSWAT licence expiry and deployments" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/opswat-license-exporter"
ENTRYPOINT ["/usr/local/bin/opswat-license-exporter", "--config.file", "/etc/opswat-license-exporter/config.yaml"]
