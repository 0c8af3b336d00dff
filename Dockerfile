# A static, non-root image of the manager.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin kubernetes-upgrader \
    && cp target/x86_64-unknown-linux-musl/release/kubernetes-upgrader /kubernetes-upgrader

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /kubernetes-upgrader /kubernetes-upgrader
USER 65532:65532
ENTRYPOINT ["/kubernetes-upgrader"]
CMD ["run"]
