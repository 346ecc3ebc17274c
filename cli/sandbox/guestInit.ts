/**
 * The guest test image's /init and DHCP hook (busybox sh). Kept as strings so they ship inside
 * dist/ with the compiled command; the image builder writes them into the initramfs.
 *
 * Kernel command line options read by /init:
 *   lab.name=NAME      hostname and the name in "hello from NAME" (letters, digits, . _ - only)
 *   lab.ip=CIDR        static address (e.g. 172.24.4.50/24); without it the guest uses DHCP
 *   lab.gw=IP          default gateway for the static address
 *   lab.probe=URL      fetch URL every 2 s and log "PROBE-OK <body>" (egress/SNAT checks)
 *   ds=nocloud;h=NAME;i=CIDR;g=IP   the same hints, NoCloud-style (h=hostname, i=address, g=gateway)
 */

export const GUEST_INIT = `#!/bin/busybox sh
# kvmlab sandbox guest: static or DHCP networking, an HTTP server, a readiness line, ACPI poweroff.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
exec </dev/console >/dev/console 2>&1
log() { echo "lab: $*"; }

for m in $(cat /etc/modules-order); do
  insmod "/lib/modules/$m.ko" || log "insmod $m failed"
done

NAME=lab IP= GW= PROBE=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lab.name=*) NAME=\${arg#lab.name=} ;;
    lab.ip=*) IP=\${arg#lab.ip=} ;;
    lab.gw=*) GW=\${arg#lab.gw=} ;;
    lab.probe=*) PROBE=\${arg#lab.probe=} ;;
    ds=nocloud*)
      for kv in $(echo "\${arg#ds=nocloud}" | tr ';' ' '); do
        case "$kv" in
          h=*) NAME=\${kv#h=} ;;
          i=*) IP=\${kv#i=} ;;
          g=*) GW=\${kv#g=} ;;
        esac
      done ;;
  esac
done
case "$NAME" in *[!A-Za-z0-9._-]*|'') log "ignoring unsafe lab.name"; NAME=lab ;; esac
case "$IP" in *[!0-9./]*) log "ignoring malformed lab.ip"; IP= ;; esac
case "$GW" in *[!0-9.]*) log "ignoring malformed lab.gw"; GW= ;; esac
hostname "$NAME"
ip link set lo up

IF=
i=0
while [ -z "$IF" ] && [ $i -lt 50 ]; do
  for d in /sys/class/net/*; do
    n=\${d##*/}
    [ "$n" = lo ] && continue
    IF=$n
    break
  done
  [ -n "$IF" ] || usleep 100000
  i=$((i + 1))
done

ADDR=none MAC=none
if [ -n "$IF" ]; then
  ip link set "$IF" up
  MAC=$(cat "/sys/class/net/$IF/address")
  if [ -n "$IP" ]; then
    ip addr add "$IP" dev "$IF"
    [ -n "$GW" ] && ip route add default via "$GW"
  else
    udhcpc -i "$IF" -s /etc/udhcpc.script -t 10 -T 2 -b -S
    i=0
    while [ $i -lt 250 ] && ! ip -4 addr show dev "$IF" | grep -q inet; do usleep 100000; i=$((i + 1)); done
  fi
  A=$(ip -4 addr show dev "$IF" | sed -n 's/.*inet \\([0-9.]*\\).*/\\1/p' | head -n 1)
  [ -n "$A" ] && ADDR=$A
else
  log "no network interface found"
fi

mkdir -p /www/cgi-bin
echo "hello from $NAME" > /www/index.html
echo ok > /www/health
dd if=/dev/zero of=/www/big bs=1024 count=1024 2>/dev/null
cat > /www/cgi-bin/ip <<'CGI'
#!/bin/sh
# The client address as the guest sees it (plain IPv4, without httpd's [::ffff:…] form).
a=\${REMOTE_ADDR#[}
a=\${a%]}
# CRLF line ends: strict HTTP clients (Node's parser) refuse bare LF in headers.
printf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' "\${a#::ffff:}"
CGI
chmod 755 /www/cgi-bin/ip
httpd -p 80 -h /www
# A second listener, for tests of security groups that admit one port and refuse another.
httpd -p 8080 -h /www

if [ -n "$PROBE" ]; then
  (
    while :; do
      if out=$(timeout 3 wget -q -O - "$PROBE" 2>/dev/null); then echo "PROBE-OK $out"; else echo "PROBE-FAIL"; fi
      sleep 2
    done
  ) &
fi

echo "LAB-READY name=$NAME ip=$ADDR mac=$MAC"

# PID 1 stays here: wait for a press of the ACPI power button (virsh shutdown), then power off.
while :; do
  EV=
  for e in /sys/class/input/event*; do
    if grep -q "Power Button" "$e/device/name" 2>/dev/null; then EV=/dev/input/\${e##*/}; break; fi
  done
  if [ -n "$EV" ] && [ -e "$EV" ]; then
    # evdev refuses reads shorter than one event (24 bytes on x86-64).
    dd if="$EV" of=/dev/null bs=24 count=1 2>/dev/null && { log "power button: powering off"; sync; poweroff -f; }
  fi
  sleep 1
done
`;

export const UDHCPC_SCRIPT = `#!/bin/sh
# busybox udhcpc hook: apply the lease.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr show dev "$interface" | grep -q "inet $ip/" || {
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/\${mask:-24}" dev "$interface"
    }
    if [ -n "$router" ]; then
      ip route del default 2>/dev/null
      for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    fi
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
`;

/** Modules the guest loads (dependencies are added and ordered by the image builder). */
export const GUEST_MODULES = ["virtio_pci", "virtio_net", "virtio_blk", "e1000", "button", "evdev"] as const;

/** Kernel command line the image is meant to boot with (the `lab.*` options go after it). */
export const GUEST_CMDLINE = "console=ttyS0 quiet panic=-1";
