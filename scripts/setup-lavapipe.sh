#!/usr/bin/env bash
# Software WebGPU for CI on Debian 12: Mesa's lavapipe (Vulkan on the CPU) >= 25 from bookworm-backports,
# which Dawn accepts (Debian 12's own Mesa 22 is rejected). Idempotent; run as root.
#
#   eval "$(scripts/setup-lavapipe.sh)"     # installs if needed, then exports the environment
#
# stdout carries only the `export` lines (also written to ~/.cache/medtune/lavapipe.env); progress goes to stderr.
set -euo pipefail

log() { echo "setup-lavapipe: $*" >&2; }

icd=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
[ -f "$icd" ] || icd=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -n1 || true)
mesa_version() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true; }
mesa_major() { mesa_version | sed -E 's/^([0-9]+:)?([0-9]+).*/\2/'; }

if [ -z "$icd" ] || [ "$(mesa_major || echo 0)" -lt 25 ] 2>/dev/null || ! dpkg-query -W libvulkan1 >/dev/null 2>&1; then
  . /etc/os-release
  [ "${VERSION_CODENAME:-}" = bookworm ] || { log "expected Debian 12 (bookworm), found ${PRETTY_NAME:-unknown}"; exit 1; }
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # the Debian mirror this machine already uses (deb822 `URIs:` or one-line `deb URI bookworm main`)
    mirror=$(sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
    [ -n "$mirror" ] || mirror=$(sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1 || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    log "adding bookworm-backports from $mirror"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
      > /etc/apt/sources.list.d/bookworm-backports.sources
  fi
  log "installing mesa-vulkan-drivers and libvulkan1 from bookworm-backports"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >&2
  icd=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json | head -n1)
fi
log "lavapipe from mesa-vulkan-drivers $(mesa_version): $icd"

# Dawn needs a private runtime folder; the shader cache is kept between runs (a cold one costs minutes).
runtime=${XDG_RUNTIME_DIR:-/tmp/runtime-$(id -u)}
cache=${MESA_SHADER_CACHE_DIR:-$HOME/.cache/medtune/mesa-shaders}
mkdir -p "$runtime" "$cache"
chmod 700 "$runtime"
env_file=$HOME/.cache/medtune/lavapipe.env
cat > "$env_file" <<EOF
export VK_ICD_FILENAMES=$icd
export XDG_RUNTIME_DIR=$runtime
export MESA_SHADER_CACHE_DIR=$cache
export MESA_SHADER_CACHE_MAX_SIZE=4G
EOF
cat "$env_file"
