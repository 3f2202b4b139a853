#!/usr/bin/env bash
# Builds the wxdispatch container image with buildah, without a daemon and without pulling a
# base image: FROM scratch, plus exactly what the stripped release binary needs.
#
#   bash scripts/image.sh                 release build, image, OCI archive; prints digest and size
#   bash scripts/image.sh --test          the same, then runs `wxdispatch --version` and the demo
#                                         inside the image (buildah run, chroot isolation, host
#                                         network: RabbitMQ on 127.0.0.1:5672), failing if
#                                         either fails. CI runs this.
#   bash scripts/image.sh rootfs DIR BIN  only lay out the image's files under DIR (the
#                                         Dockerfile's last build step runs this, so both ways
#                                         give the same layout)
#
# The image (both ways):
#   /usr/local/bin/wxdispatch          the release binary (Cargo.toml: strip = "symbols")
#   /lib/..., /lib64/ld-linux-*.so.*   the shared libraries it links, as ldd resolves them
#                                      (glibc, libm, libgcc_s): no static build, since
#                                      musl's target is not installed here and cannot be fetched
#   /etc/ssl/certs/ca-certificates.crt the CA bundle (rustls reads it: SSL_CERT_FILE)
#   /etc/passwd, /etc/group            the user and group wxdispatch, 10001:10001
#   /etc/nsswitch.conf                 hosts: files dns (a pod's /etc/hosts first)
# No shell, no package manager. User 10001, ENTRYPOINT ["wxdispatch"], CMD ["run"], OCI labels.
#
# Health check: an OCI image config has no field for one; only Docker's format has
# HEALTHCHECK, and Kubernetes ignores it anyway (the Deployment's probes run `wxdispatch probe`
# or httpGet). The OCI archive therefore carries the check as the label
# org.wxdispatch.healthcheck only; IMAGE_DOCKER_ARCHIVE=1 also writes a Docker-format archive
# with a real HEALTHCHECK ["wxdispatch", "probe"], for plain `docker load` / `docker run`.
#
# Environment: IMAGE_OUT (default target/image), IMAGE_TAG (default wxdispatch:<version>),
# IMAGE_SKIP_BUILD=1 (use target/release/wxdispatch as it is), IMAGE_MAX_MB (default 30:
# fail when the image's files are bigger). Installs buildah (Debian) when it is missing.
# Storage: vfs under target/image/storage (no overlay or fuse needed), isolation chroot.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }

# rootfs DIR BIN: the image's files. Needs ldd and the CA bundle on this (Debian) machine.
rootfs() {
  local dir=$1 bin=$2 lib real
  [ -x "$bin" ] || die "no binary at $bin"
  rm -rf "$dir"
  mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs"
  install -m 0755 "$bin" "$dir/usr/local/bin/wxdispatch"
  # Every library ldd resolves, and the dynamic loader, at the paths the binary asks for
  # (copied as files: the image needs no symlinks).
  ldd "$bin" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | sort -u \
    | while read -r lib; do
        real="$(readlink -f "$lib")"
        mkdir -p "$dir$(dirname "$lib")"
        install -m 0755 "$real" "$dir$lib"
      done
  [ -f /etc/ssl/certs/ca-certificates.crt ] || die "no /etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates)"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nwxdispatch:x:10001:10001:wxdispatch:/nonexistent:/sbin/nologin\n' \
    > "$dir/etc/passwd"
  printf 'root:x:0:\nwxdispatch:x:10001:\n' > "$dir/etc/group"
  printf 'hosts: files dns\n' > "$dir/etc/nsswitch.conf"
  # An empty /tmp, as programs expect (the worker writes nothing; Kubernetes mounts the root
  # read-only anyway).
  mkdir -m 1777 "$dir/tmp"
  chmod 0644 "$dir/etc/passwd" "$dir/etc/group" "$dir/etc/nsswitch.conf"
}

if [ "${1:-}" = rootfs ]; then
  [ $# = 3 ] || die "usage: image.sh rootfs DIR BINARY"
  rootfs "$2" "$3"
  exit 0
fi
TEST=0
case "${1:-}" in
  "") ;;
  --test) TEST=1; shift ;;
  *) die "usage: image.sh [--test] | image.sh rootfs DIR BINARY" ;;
esac
[ $# = 0 ] || die "usage: image.sh [--test] | image.sh rootfs DIR BINARY"

cd "$ROOT"
START=$SECONDS
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
OUT="${IMAGE_OUT:-$ROOT/target/image}"
TAG="${IMAGE_TAG:-wxdispatch:$VERSION}"
MAX_MB="${IMAGE_MAX_MB:-30}"

if ! command -v buildah >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "== installing buildah (Debian)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi
# vfs needs no kernel overlay support and no fuse; the store lives under target/.
export STORAGE_DRIVER=vfs
BUILDAH=(buildah --root "$OUT/storage" --runroot "$OUT/run" --storage-driver vfs)

if [ -z "${IMAGE_SKIP_BUILD:-}" ]; then
  echo "== cargo build --release (stripped)"
  t=$SECONDS
  cargo build --release --locked --bin wxdispatch
  echo "release build: $((SECONDS - t)) s"
fi
BIN=target/release/wxdispatch
file "$BIN" 2>/dev/null | grep -q 'not stripped' && die "$BIN is not stripped (Cargo.toml [profile.release] strip)"

echo "== rootfs"
rootfs "$OUT/rootfs" "$BIN"
ROOTFS_BYTES="$(du -sb "$OUT/rootfs" | cut -f1)"
find "$OUT/rootfs" -type f -printf '%s\t/%P\n' | sed "s#\t/#\t/#" | sort -k2

echo "== buildah (vfs, from scratch)"
ctr="$("${BUILDAH[@]}" from --format docker scratch)"
cleanup() { "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"${BUILDAH[@]}" copy --quiet "$ctr" "$OUT/rootfs/" /
"${BUILDAH[@]}" config \
  --user 10001:10001 \
  --workingdir / \
  --env PATH=/usr/local/bin \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --port 9090 --port 8080 \
  --entrypoint '["wxdispatch"]' --cmd run \
  --label org.opencontainers.image.title=wxdispatch \
  --label "org.opencontainers.image.description=A RabbitMQ worker that sends WeChat Official Account template messages, exactly once per job." \
  --label "org.opencontainers.image.version=$VERSION" \
  --label "org.opencontainers.image.revision=$REVISION" \
  --label "org.opencontainers.image.created=$CREATED" \
  --label "org.opencontainers.image.licenses=MIT OR Apache-2.0" \
  --label org.opencontainers.image.base.name=scratch \
  --label "org.wxdispatch.healthcheck=wxdispatch probe" \
  "$ctr"
# One image per tag in the store: the previous build's goes (vfs keeps whole copies).
"${BUILDAH[@]}" rmi -f "$TAG" >/dev/null 2>&1 || true
"${BUILDAH[@]}" commit --quiet --format oci --rm "$ctr" "$TAG" >/dev/null
trap - EXIT

mkdir -p "$OUT"
ARCHIVE="$OUT/wxdispatch-$VERSION.oci.tar"
rm -f "$ARCHIVE"
"${BUILDAH[@]}" push --quiet --digestfile "$OUT/digest" "$TAG" "oci-archive:$ARCHIVE:$TAG"
if [ -n "${IMAGE_DOCKER_ARCHIVE:-}" ]; then
  # Docker format keeps HEALTHCHECK: commit a second time from the same files.
  ctr="$("${BUILDAH[@]}" from --format docker "$TAG")"
  "${BUILDAH[@]}" config --healthcheck 'CMD wxdispatch probe' \
    --healthcheck-interval 10s --healthcheck-timeout 3s --healthcheck-start-period 10s "$ctr"
  "${BUILDAH[@]}" rmi -f "$TAG-docker" >/dev/null 2>&1 || true
  "${BUILDAH[@]}" commit --quiet --format docker --rm "$ctr" "$TAG-docker" >/dev/null
  rm -f "$OUT/wxdispatch-$VERSION.docker.tar"
  "${BUILDAH[@]}" push --quiet "$TAG-docker" "docker-archive:$OUT/wxdispatch-$VERSION.docker.tar:$TAG"
  echo "docker archive (with HEALTHCHECK): $OUT/wxdispatch-$VERSION.docker.tar"
fi

DIGEST="$(cat "$OUT/digest")"
ARCHIVE_BYTES="$(stat -c %s "$ARCHIVE")"
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
echo "== image $TAG"
echo "archive: $ARCHIVE"
echo "digest:  $DIGEST"
echo "size:    $(mb "$ROOTFS_BYTES") of files ($ROOTFS_BYTES bytes), archive $(mb "$ARCHIVE_BYTES")"
echo "took:    $((SECONDS - START)) s"
[ "$ROOTFS_BYTES" -le $((MAX_MB * 1000000)) ] \
  || die "the image's files take $(mb "$ROOTFS_BYTES"), over the ${MAX_MB} MB budget"

[ "$TEST" = 1 ] || exit 0
# Run the image as it ships: its user, its entrypoint, no shell. The demo needs RabbitMQ on
# 127.0.0.1:5672 (scripts/services.sh) and nothing else: its WeChat simulator is embedded.
echo "== inside the image: wxdispatch --version, then the demo"
t=$SECONDS
ctr="$("${BUILDAH[@]}" from "$TAG")"
trap 'cleanup' EXIT
in_image() {
  "${BUILDAH[@]}" run --isolation chroot --network host --user 10001:10001 "$ctr" -- "$@"
}
version="$(in_image wxdispatch --version)"
echo "$version"
[ "$version" = "wxdispatch $VERSION" ] || die "--version in the image printed '$version'"
in_image wxdispatch probe --addr 127.0.0.1:1 2>/dev/null && die "probe answered 0 with nothing listening"
echo "probe with nothing listening: exit 1, as it should"
in_image env 2>/dev/null && die "the image has a shell toolbox (env ran)" || true
in_image wxdispatch demo --jobs "${IMAGE_DEMO_JOBS:-500}"
echo "image test: ok ($((SECONDS - t)) s)"
