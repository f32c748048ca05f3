# syntax=docker/dockerfile:1
# kvsync: a static (musl) binary on a distroless base, non-root.
#
#   docker build -t kvsync:dev .
#   docker run --rm kvsync:dev --version
#
# Stages: chef (tools) -> planner (dependency recipe) -> builder (dependencies
# cached in their own layer, then kvsync) -> runtime (the binary alone).

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl \
 && cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --target x86_64-unknown-linux-musl --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin kvsync \
 && cp target/x86_64-unknown-linux-musl/release/kvsync /kvsync

# distroless/static: no shell, no libc, CA certificates and /etc/passwd with
# nonroot (65532) only. kvsync carries its own Mozilla roots (webpki-roots);
# --ca-file adds more.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
COPY --from=builder /kvsync /kvsync
# One UID in image and chart (values.yaml securityContext.runAsUser).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/kvsync"]
CMD ["run"]
