#!/usr/bin/env bash
# Start a Docker engine if none answers (needs root and Debian's docker.io), then build the local
# Debian + Python 3.11 base image that stands in for python:3.11-slim on machines without a
# registry (skipped when the tag exists). Sourced or run by tests/run.sh; safe to run twice.
set -euo pipefail
BASE_IMAGE=${MLFLOW_DEPLOY_TEST_BASE_IMAGE:-local/debian-python:bookworm-slim}
LOGDIR=${LOGDIR:-${TMPDIR:-/tmp}/mlflow-deploy-test-services}
mkdir -p "$LOGDIR"

if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null 2>&1; then
        echo "docker.sh: no Docker engine and no dockerd (apt-get install docker.io)" >&2
        exit 1
    fi
    echo "docker.sh: starting dockerd (log: $LOGDIR/dockerd.log)"
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 setsid dockerd --bridge=none --iptables=false \
        >"$LOGDIR/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { echo "docker.sh: dockerd did not start" >&2; tail -20 "$LOGDIR/dockerd.log" >&2; exit 1; }
fi

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "docker.sh: base image $BASE_IMAGE present"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "docker.sh: debootstrap missing (apt-get install debootstrap)" >&2
    exit 1
fi
ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/debian-rootfs.XXXXXX")
trap 'rm -rf "$ROOTFS"' EXIT
echo "docker.sh: building $BASE_IMAGE with debootstrap (about 1-2 min)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$ROOTFS" http://deb.debian.org/debian >"$LOGDIR/debootstrap.log" 2>&1 \
    || { tail -20 "$LOGDIR/debootstrap.log" >&2; exit 1; }
tar -C "$ROOTFS" -c --exclude='./var/cache/apt/archives/*.deb' \
    --exclude='./var/lib/apt/lists/*' --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
    --exclude='./usr/share/locale/*' . \
  | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
echo "docker.sh: $BASE_IMAGE built ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
