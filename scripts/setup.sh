#!/usr/bin/env bash
# `npm run setup`: everything kvmlab needs on a fresh Debian 12 machine, as root — the Debian
# packages the sandbox, the providers and the tests use, the npm dependencies, and the build.
# Then `npm run demo` builds the 3-tier lab on a local sandbox (README, Quick start).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "npm run setup: run as root (it installs Debian packages; the sandbox needs root too)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# In a container without an init system: keep package scripts from starting services kvmlab runs itself.
if [ ! -d /run/systemd/system ] && [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
fi
apt-get update -q
# The same list as .ci/run and docs/sandbox.md (prerequisites).
apt-get install -y -q --no-install-recommends \
  ca-certificates \
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
  openvswitch-switch haproxy dnsmasq-base openssh-server openssh-client busybox-static dropbear-bin \
  genisoimage libxml2-utils iproute2 iptables procps util-linux cpio ethtool curl xz-utils zstd kmod psmisc \
  socat apache2-utils ipset conntrack arping \
  chromium novnc websockify keepalived
# Node.js 20 or newer (package.json engines). Debian 12's own nodejs is 18: install 20 from
# NodeSource (https://github.com/nodesource/distributions) or your usual source first.
if ! command -v node >/dev/null || ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "npm run setup: kvmlab needs Node.js 20 or newer (found: $(node --version 2>/dev/null || echo none)); Debian 12 ships 18 — install Node.js 20 (e.g. from NodeSource) and run npm run setup again" >&2
  exit 1
fi
npm ci
npm run build
echo "setup done: now run  npm run demo"
