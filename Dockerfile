# syntax=docker/dockerfile:1
#
# wxdispatch container image.
#   docker build -t wxdispatch:0.1.0 .
#   docker run --rm -p 9090:9090 -e WXD_AMQP_URL=... -e WXD_APPID=... -e WXD_SECRET=... wxdispatch:0.1.0
#
# Runtime: distroless cc (glibc, libgcc, CA certificates, no shell), as uid/gid 10001, which is
# what k8s/deployment.yaml expects (runAsUser 10001, readOnlyRootFilesystem: the worker writes
# nothing to disk). TLS is rustls/aws-lc-rs, so no OpenSSL is needed at run time.

ARG RUST_VERSION=1

# ---- build -------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS build
# aws-lc-sys (rustls' crypto backend) compiles C; cmake/perl cover its non-prebuilt paths.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake perl pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin wxdispatch \
 && install -D -m 0755 target/release/wxdispatch /out/wxdispatch

# ---- run ---------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/wxdispatch /usr/local/bin/wxdispatch
USER 10001:10001
EXPOSE 9090
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT ["wxdispatch"]
CMD ["run"]
