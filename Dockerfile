# Keygate images: `docker build --target auth-server -t ghcr.io/keygate/auth-server:0.1.0 .`
# and `--target auth-operator -t ghcr.io/keygate/auth-operator:0.1.0` (the chart's defaults).
# Statically linked (musl) binaries on an empty base: no shell, no package manager, no libc;
# TLS roots are compiled in (webpki), the in-cluster CA comes from the ServiceAccount mount.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
        --bin auth-server --bin auth-operator \
    && mkdir -p /out/tmp \
    && cp target/x86_64-unknown-linux-musl/release/auth-server \
          target/x86_64-unknown-linux-musl/release/auth-operator /out/

FROM scratch AS auth-server
COPY --from=build /out/auth-server /usr/local/bin/auth-server
COPY --from=build --chown=65532:65532 /out/tmp /tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/auth-server"]
CMD ["serve"]

FROM scratch AS auth-operator
COPY --from=build /out/auth-operator /usr/local/bin/auth-operator
COPY --from=build --chown=65532:65532 /out/tmp /tmp
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/auth-operator"]
