# syntax=docker/dockerfile:1
#
# wxdispatch container image.
#   docker build -t wxdispatch:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   docker run --rm -p 9090:9090 -e WXD_AMQP_URL=... -e WXD_APPID=... -e WXD_SECRET=... wxdispatch:0.1.0
#
# Runtime: FROM scratch with exactly the files scripts/image.sh lays out (the same script, run
# in the build stage: `image.sh rootfs`): the stripped binary, the glibc libraries it links
# (ldd), the CA bundle, /etc/passwd and /etc/group for uid/gid 10001, which is what
# k8s/base/deployment.yaml expects (runAsUser 10001, readOnlyRootFilesystem: the worker writes
# nothing to disk). No shell. TLS is rustls/aws-lc-rs, so no OpenSSL is needed at run time.
# scripts/image.sh builds the same image with buildah and no daemon (what CI runs).
#
# The binary is built with `cargo auditable`, which embeds the dependency list (crate names,
# versions, sources) in a linker section, so image scanners (Trivy, Grype, Syft) and
# `cargo audit bin` can read exactly what went into it.
#
# The build image by digest: for a release, pin it by passing the digest you verified, e.g.
#   docker buildx imagetools inspect rust:1-slim-bookworm     (the Digest: line)
#   --build-arg BUILD_DIGEST=@sha256:<digest>
# A tag can be moved to other content; a digest cannot. They are empty here (the tags are
# used) because no registry could be reached where this file was written to look them up, and
# a digest must never be guessed.

ARG RUST_VERSION=1
ARG BUILD_DIGEST=""

# ---- build -------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm${BUILD_DIGEST} AS build
# aws-lc-sys (rustls' crypto backend) compiles C; cmake/perl cover its non-prebuilt paths.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake perl pkg-config ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo install cargo-auditable --locked --version 0.7.7
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo auditable build --release --locked --bin wxdispatch \
 && bash scripts/image.sh rootfs /rootfs target/release/wxdispatch

# ---- run ---------------------------------------------------------------------------------
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="wxdispatch" \
      org.opencontainers.image.description="A RabbitMQ worker that sends WeChat Official Account template messages, exactly once per job." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="scratch"
COPY --from=build /rootfs/ /
USER 10001:10001
EXPOSE 9090 8080
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# Docker and Podman run it; Kubernetes ignores HEALTHCHECK (the Deployment has its probes).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s CMD ["wxdispatch", "probe"]
ENTRYPOINT ["wxdispatch"]
CMD ["run"]
