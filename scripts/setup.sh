#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine, run as root:
#   Debian packages (Mininet, Open vSwitch, traffic and capture tools) and a .venv/
#   at the repo root that sees Debian's mininet and holds Ryu, torch, PyG and this project.
# Re-running it only installs what is missing.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
py="$venv/bin/python"
started=$(date +%s)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh must run as root (it installs Debian packages and drives Open vSwitch)" >&2
  exit 1
fi

# --- Debian packages --------------------------------------------------------
apt_packages=(
  mininet openvswitch-switch openvswitch-common iproute2 iputils-ping iperf3 net-tools
  tshark tcpreplay prads
  python3-venv python3-dev build-essential
)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# --- virtual environment ----------------------------------------------------
# Built from Debian's interpreter with system site packages so that Debian's
# mininet (not on PyPI) imports from the same interpreter as Ryu and torch.
if [ ! -x "$py" ] || ! "$py" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
  log "creating $venv from /usr/bin/python3"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
pip() { "$py" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v '^WARNING: Location' >&2); }

have() { "$py" - "$@" <<'EOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, _, wanted = spec.partition("==")
    try:
        got = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if wanted and got.split("+")[0] != wanted:
        sys.exit(1)
EOF
}

# Ryu 4.34's setup hook needs the old setuptools API and pbr, so it is built
# without isolation against setuptools 65; torch later lifts setuptools again.
if ! have eventlet==0.33.3 ryu==4.34; then
  log "installing Ryu 4.34 with eventlet 0.33.3"
  pip install "pip>=23" "setuptools==65.5.1" wheel pbr
  pip install "eventlet==0.33.3" "dnspython>=2,<3"
  pip install --no-build-isolation "ryu==4.34"
fi

# eventlet >= 0.30.3 dropped eventlet.wsgi.ALREADY_HANDLED, which ryu.app.wsgi
# imports; the shim restores it when eventlet.wsgi is first imported.
site="$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
install -m 0644 "$repo/scripts/dm_eventlet_compat.py" "$site/dm_eventlet_compat.py"
echo "import dm_eventlet_compat; dm_eventlet_compat.install()" > "$site/dm_eventlet_compat.pth"

if ! have torch==2.13.0; then
  log "installing torch 2.13.0 (CPU)"
  pip install "torch==2.13.0"
fi

log "installing the project (editable, with the dev extra)"
pip install --no-build-isolation -e "$repo[dev]"

"$py" - <<'EOF'
import controller_app, gnn_policy, twin, mininet_topos, trace_replay
import ryu, torch, torch_geometric, mininet.net, eventlet.wsgi, pyarrow  # pyarrow: twin.records
assert hasattr(eventlet.wsgi, "ALREADY_HANDLED")
print(f"[setup] one interpreter: torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, "
      f"ryu {ryu.__version__ if hasattr(ryu, '__version__') else '4.34'}, mininet ok")
EOF
log "done in $(( $(date +%s) - started )) s"
