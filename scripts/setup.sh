#!/usr/bin/env bash
# Installs what Kindling's build, tests and demo need on a Debian host:
# kernel sources and the tools to build them, binutils for the test guests,
# QEMU as the peer the benchmarks compare against, protoc for agent/api's
# generated code (make proto) and systemd-analyze (package systemd) to check
# kindlingd's unit. Idempotent: it installs only what is missing.
set -euo pipefail

packages=(linux-source-6.12 build-essential binutils flex bison bc libelf-dev libssl-dev
          cpio xz-utils zstd patch qemu-system-x86 curl linux-config-6.12
          protobuf-compiler systemd)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "setup: all packages present"
else
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root to install ${missing[*]} (run as root or install sudo)" >&2; exit 1; }
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -e /dev/kvm ] && [ ! -r /dev/kvm -o ! -w /dev/kvm ]; then
  echo "setup: /dev/kvm is not readable and writable by $(id -un): add the user to the kvm group" >&2
fi
