# Portcullis: built with the same toolchain as CI, run as a non-root user in a small image.
#   docker build -t portcullis .
#   docker run -p 8080:8080 -v $PWD/my-config:/config:ro portcullis
# The mounted /config/portcullis.toml must listen on 0.0.0.0 ([server] listen = "0.0.0.0:8080"),
# since the default, 127.0.0.1, is unreachable from outside the container. The admin listener
# stays on 127.0.0.1:9090 by default, so only 8080 is exposed: the HEALTHCHECK below runs
# inside the container; give admin.listen 0.0.0.0:9090 and publish it for an outside scraper.
# Bucket credentials come from the AWS default chain (environment, web identity, ECS task
# role, IMDS), never from the config.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# .cargo/config.toml tunes jemalloc (how soon freed memory goes back to the system).
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
# Stripped: the image's binary needs no debug info, which is most of its size.
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin portcullis

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin portcullis \
    && mkdir -p /data \
    && chown portcullis /data
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
COPY config /config
USER 10001
EXPOSE 8080
VOLUME ["/config", "/data"]
# Liveness, not readiness: a container restarted because S3 is down would only restart
# again. No curl in the image: the binary asks its own admin listener.
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/portcullis", "health", "--admin", "127.0.0.1:9090", "--path", "/healthz"]
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/config/portcullis.toml"]
