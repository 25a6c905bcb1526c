#!/usr/bin/env bash
# Build the fedcluster image (deploy/Containerfile) with podman, or docker where podman is absent.
#
#   deploy/build-image.sh [--make-base] [--base IMAGE] [--tag IMAGE]
#
# --make-base   make localhost/debian-py:bookworm from Debian's packages (mmdebstrap, root)
#               and build on it: for machines that reach no image registry. The rootfs tar is
#               kept in $FEDCLUSTER_CACHE (/var/tmp/fedcluster) and reused.
# --base IMAGE  the base image (also BASE_IMAGE=...; default python:3.11-slim)
# --tag IMAGE   the image built (also IMAGE=...; default localhost/fedcluster:latest)
#
# Python dependencies are built on this host into deploy/wheels (`pip wheel`, with $PYTHON,
# default the repo's .venv or python3); its Python must have the base image's minor version.
# PODMAN_GLOBAL_FLAGS and CONTAINER_RUN_FLAGS (below) adapt podman to a sandbox; prints the
# image's size and the build's seconds at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/fedcluster:latest}"
BASE_IMAGE="${BASE_IMAGE:-}"
CACHE="${FEDCLUSTER_CACHE:-/var/tmp/fedcluster}"
MADE_BASE=localhost/debian-py:bookworm
make_base=0
while (($#)); do
    case "$1" in
        --make-base) make_base=1 ;;
        --base) BASE_IMAGE="$2"; shift ;;
        --tag) IMAGE="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-image.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z "$BASE_IMAGE" ]]; then
    if ((make_base)); then BASE_IMAGE="$MADE_BASE"; else BASE_IMAGE=python:3.11-slim; fi
fi

# The engine: podman if it can run here, else docker. In a sandbox without systemd, and with
# a hard limit on open files below podman's default, podman needs runc, cgroupfs and ulimits.
engine=()
run_flags=()
if command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then
    default_global="--cgroup-manager=cgroupfs"
    command -v runc >/dev/null 2>&1 && default_global="--runtime runc $default_global"
    read -r -a global <<<"${PODMAN_GLOBAL_FLAGS:-$default_global}"
    engine=(podman "${global[@]}")
    read -r -a run_flags <<<"${CONTAINER_RUN_FLAGS:---ulimit nofile=1024:1024 --ulimit nproc=1024:1024}"
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=(docker)
    read -r -a run_flags <<<"${CONTAINER_RUN_FLAGS:-}"
else
    echo "build-image.sh: neither podman nor docker can run here (install podman and runc," \
        "or start a docker daemon)" >&2
    exit 1
fi

if ((make_base)) && [[ "$BASE_IMAGE" == "$MADE_BASE" ]] \
        && ! "${engine[@]}" image exists "$MADE_BASE" 2>/dev/null \
        && ! "${engine[@]}" image inspect "$MADE_BASE" >/dev/null 2>&1; then
    mkdir -p "$CACHE"
    rootfs="$CACHE/debian-py-bookworm.tar"
    if [[ ! -s "$rootfs" ]]; then
        command -v mmdebstrap >/dev/null || { echo "build-image.sh: --make-base needs" \
            "mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
        echo "== making $rootfs with mmdebstrap"
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs.part"
        mv "$rootfs.part" "$rootfs"
    fi
    echo "== importing $MADE_BASE"
    "${engine[@]}" import "$rootfs" "$MADE_BASE" >/dev/null
fi

# Wheels for the build stage (setuptools, Cython, numpy) and for the runtime, built here.
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
host_py=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
base_py=$("${engine[@]}" run --rm "${run_flags[@]}" "$BASE_IMAGE" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ "$host_py" != "$base_py" ]]; then
    echo "build-image.sh: $BASE_IMAGE has Python $base_py but $PYTHON is $host_py: the wheels" \
        "must match (set PYTHON=python$base_py)" >&2
    exit 1
fi
mkdir -p deploy/wheels
# rewritten only when it changes: an unchanged deploy/wheels keeps the image's layer cache
"$PYTHON" - <<'PY'
import pathlib, tomllib
meta = tomllib.loads(pathlib.Path("pyproject.toml").read_text())
text = "\n".join(meta["build-system"]["requires"] + meta["project"]["dependencies"]) + "\n"
path = pathlib.Path("deploy/wheels/requirements.txt")
if not path.exists() or path.read_text() != text:
    path.write_text(text)
PY
# Offline first: wheels already there are reused; only what is missing reaches the index.
if ! "$PYTHON" -m pip wheel -q --no-index --find-links deploy/wheels --wheel-dir deploy/wheels \
        -r deploy/wheels/requirements.txt >/dev/null 2>&1; then
    echo "== pip wheel -r deploy/wheels/requirements.txt"
    "$PYTHON" -m pip wheel -q --disable-pip-version-check --wheel-dir deploy/wheels \
        -r deploy/wheels/requirements.txt
fi

echo "== building $IMAGE on $BASE_IMAGE with ${engine[0]}"
build=("${engine[@]}" build --build-arg "BASE_IMAGE=$BASE_IMAGE" -f deploy/Containerfile -t "$IMAGE")
if [[ "${engine[0]}" == podman ]]; then
    build+=(--format docker "${run_flags[@]}")   # docker format: the HEALTHCHECK is kept
fi
start=$(date +%s)
"${build[@]}" .
seconds=$(($(date +%s) - start))
size=$("${engine[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE: $((size / 1000000)) MB, ${seconds} s"
