#!/usr/bin/env bash
# Install edged as a systemd service on Debian, Ubuntu or NVIDIA JetPack.
#
#   sudo tools/install.sh [--dry-run] [--cpu|--gpu] [--system-opencv] [--ort-wheel FILE]
#                         [--fetch-models] [--start]
#
# What it does (each step is skipped when already done, so running it again upgrades edged
# and changes nothing else):
#   1. the `edged` system user, in the groups video and render (cameras, GPU);
#   2. a virtualenv at /opt/edged/venv with edged from this checkout:
#      - x86_64 with an NVIDIA GPU: edged[gpu] (onnxruntime-gpu: CUDA / TensorRT);
#      - Jetson (aarch64 + /etc/nv_tegra_release): edged with the system OpenCV (JetPack's
#        is built with GStreamer, pip's is not) and instructions, or --ort-wheel, for
#        NVIDIA's onnxruntime-gpu wheel matching the JetPack;
#      - anything else: the CPU build;
#   3. /etc/edged/edged.toml from config/edged.toml when there is none (never overwritten);
#   4. /var/lib/edged/models;
#   5. systemd/edged.service → /etc/systemd/system, daemon-reload, enable.
# --dry-run prints every command instead of running it (no root needed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/edged
VENV="$PREFIX/venv"
ETC=/etc/edged
STATE=/var/lib/edged
UNIT_DIR=/etc/systemd/system
USER_NAME=edged

DRY_RUN=0
FLAVOUR=auto        # auto | cpu | gpu
SYSTEM_OPENCV=auto  # auto (yes on Jetson) | 1 | 0
ORT_WHEEL=""
FETCH=0
START=0

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --cpu) FLAVOUR=cpu ;;
    --gpu) FLAVOUR=gpu ;;
    --system-opencv) SYSTEM_OPENCV=1 ;;
    --no-system-opencv) SYSTEM_OPENCV=0 ;;
    --ort-wheel) ORT_WHEEL="${2:?--ort-wheel needs a file}"; shift ;;
    --fetch-models) FETCH=1 ;;
    --start) START=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -t 1 ]; then B=$'\033[1;34m' Y=$'\033[1;33m' N=$'\033[0m'; else B="" Y="" N=""; fi
say() { printf '%s==>%s %s\n' "$B" "$N" "$*"; }
warn() { printf '%s!!%s %s\n' "$Y" "$N" "$*" >&2; }
# run CMD...: execute, or print it under --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "run as root (sudo $0 $*), or with --dry-run to see what it would do" >&2
  exit 1
fi

# --- platform -------------------------------------------------------------------------
# EDGED_ARCH / EDGED_TEGRA_RELEASE exist so a --dry-run can show another platform's plan.
ARCH="${EDGED_ARCH:-$(uname -m)}"
TEGRA_RELEASE="${EDGED_TEGRA_RELEASE:-/etc/nv_tegra_release}"
JETSON=0
if [ "$ARCH" = aarch64 ] && [ -f "$TEGRA_RELEASE" ]; then
  JETSON=1
fi
if [ "$FLAVOUR" = auto ]; then
  FLAVOUR=cpu
  if [ "$JETSON" = 0 ] && [ "$ARCH" = x86_64 ]; then
    if { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } \
      || [ -e /dev/nvidia0 ]; then
      FLAVOUR=gpu
    fi
  fi
fi
if [ "$SYSTEM_OPENCV" = auto ]; then
  SYSTEM_OPENCV=$JETSON
fi
if [ "$JETSON" = 1 ]; then
  say "platform: Jetson ($(head -n1 "$TEGRA_RELEASE" | tr -s ' ' | cut -c1-60))"
else
  say "platform: $ARCH, onnxruntime flavour: $FLAVOUR"
fi

# --- system packages ------------------------------------------------------------------
need_pkgs=()
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv python3-pip)
if [ "$SYSTEM_OPENCV" = 1 ] && ! python3 -c 'import cv2' >/dev/null 2>&1; then
  # JetPack's own OpenCV build (with GStreamer); Ubuntu's python3-opencv elsewhere.
  if [ "$JETSON" = 1 ]; then need_pkgs+=(nvidia-opencv); else need_pkgs+=(python3-opencv); fi
fi
if [ "$SYSTEM_OPENCV" = 1 ]; then
  # GStreamer plugins for RTSP/H.264 and V4L2 sources used through OpenCV.
  for p in gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
  done
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    say "installing system packages: ${need_pkgs[*]}"
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
  else
    warn "please install: ${need_pkgs[*]} (no apt-get found)"
  fi
fi

# --- user -----------------------------------------------------------------------------
if getent passwd "$USER_NAME" >/dev/null 2>&1; then
  say "user $USER_NAME exists"
else
  say "creating system user $USER_NAME"
  run useradd --system --user-group --home-dir "$STATE" --no-create-home \
    --shell /usr/sbin/nologin --comment "edged daemon" "$USER_NAME"
fi
for group in video render; do
  if getent group "$group" >/dev/null 2>&1; then
    if id -nG "$USER_NAME" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
      :
    else
      run usermod -a -G "$group" "$USER_NAME"
    fi
  else
    # The unit names both groups in SupplementaryGroups=; a missing one would stop it
    # from starting (older L4T releases have no `render` group).
    run groupadd --system "$group"
    run usermod -a -G "$group" "$USER_NAME"
  fi
done

# --- virtualenv and edged -------------------------------------------------------------
run install -d -m 0755 "$PREFIX"
if [ -x "$VENV/bin/python" ]; then
  say "virtualenv $VENV exists; upgrading edged in it"
else
  say "creating virtualenv $VENV"
  if [ "$SYSTEM_OPENCV" = 1 ]; then
    # See the system's cv2 (built with GStreamer) from inside the venv.
    run python3 -m venv --system-site-packages "$VENV"
  else
    run python3 -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
run "${PIP[@]}" install --upgrade pip
# The ONNX Runtime flavour is an extra: [gpu] (onnxruntime-gpu), [cpu] (onnxruntime), or
# none on a Jetson with NVIDIA's wheel (both wheels provide the same module and must not
# be installed together).
if [ "$FLAVOUR" = gpu ]; then
  say "installing edged[gpu] from $REPO"
  run "${PIP[@]}" install --upgrade "$REPO[gpu]"
elif [ "$JETSON" = 1 ] && [ -n "$ORT_WHEEL" ]; then
  say "installing edged from $REPO (ONNX Runtime from $ORT_WHEEL)"
  run "${PIP[@]}" install --upgrade "$REPO"
else
  say "installing edged[cpu] from $REPO"
  run "${PIP[@]}" install --upgrade "$REPO[cpu]"
fi
if [ "$SYSTEM_OPENCV" = 1 ]; then
  # pip's opencv-python-headless has no GStreamer and would shadow the system cv2.
  run "${PIP[@]}" uninstall -y opencv-python-headless
fi
if [ "$JETSON" = 1 ]; then
  if [ -n "$ORT_WHEEL" ]; then
    say "installing NVIDIA's onnxruntime-gpu wheel $ORT_WHEEL"
    run "${PIP[@]}" uninstall -y onnxruntime
    run "${PIP[@]}" install --no-deps "$ORT_WHEEL"
  else
    warn "Jetson: pip's onnxruntime is CPU-only. For CUDA/TensorRT install NVIDIA's"
    warn "onnxruntime-gpu wheel built for your JetPack (Jetson Zoo / jetson-ai-lab index), e.g.:"
    warn "  sudo $VENV/bin/pip uninstall -y onnxruntime"
    warn "  sudo $VENV/bin/pip install onnxruntime_gpu-<version>-cp310-cp310-linux_aarch64.whl"
    warn "or run this script again with --ort-wheel FILE."
  fi
fi

# --- configuration and state ----------------------------------------------------------
run install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
if [ -e "$ETC/edged.toml" ]; then
  say "$ETC/edged.toml exists; left as it is"
else
  say "installing $ETC/edged.toml (edit the [[cameras]] and [mqtt] sections)"
  run install -m 0640 -o root -g "$USER_NAME" "$REPO/config/edged.toml" "$ETC/edged.toml"
fi
run install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE" "$STATE/models"

# --- systemd --------------------------------------------------------------------------
say "installing $UNIT_DIR/edged.service"
run install -m 0644 "$REPO/systemd/edged.service" "$UNIT_DIR/edged.service"
run systemctl daemon-reload
run systemctl enable edged.service

if [ "$FETCH" = 1 ]; then
  say "fetching the models of the configured phase"
  run runuser -u "$USER_NAME" -- "$VENV/bin/edged" models fetch --config "$ETC/edged.toml"
fi
if [ "$START" = 1 ]; then
  run systemctl restart edged.service
fi

cat <<EOF

edged is installed and enabled. Next:
  sudoedit $ETC/edged.toml                      # cameras, broker, phase
  sudo -u $USER_NAME $VENV/bin/edged check-config -c $ETC/edged.toml
  sudo -u $USER_NAME $VENV/bin/edged models fetch -c $ETC/edged.toml   # or --mirror URL
  sudo -u $USER_NAME $VENV/bin/edged cameras probe -c $ETC/edged.toml
  sudo systemctl start edged && journalctl -u edged -f
EOF
