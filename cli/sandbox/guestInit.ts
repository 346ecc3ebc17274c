/**
 * The guest test image's /init, its CGI scripts and DHCP hook (busybox sh). Kept as strings so
 * they ship inside dist/ with the compiled command; the image builder writes them into the
 * initramfs. The contract other tests code against: /work/wt/notes/guest-contract.md, restated here.
 *
 * Kernel command line options read by /init (every value is checked; an unsafe one is ignored
 * with a "lab: ignoring ..." line on the console):
 *   lab.name=NAME      hostname and the name in "hello from NAME" (letters, digits, . _ - only)
 *   lab.ip=CIDR        static address (e.g. 172.24.4.50/24); without it the guest uses DHCP
 *   lab.gw=IP          default gateway for the static address
 *   lab.probe=URL      fetch URL every 2 s and log "PROBE-OK <body>" (egress/SNAT checks)
 *   ds=nocloud;h=NAME;i=CIDR;g=IP   the same hints, NoCloud-style (h=hostname, i=address, g=gateway)
 *   lab.role=web|was|db|bastion
 *                      web: GET :80/ fetches http://<lab.upstream>/ and answers "web=NAME <that line>"
 *                      was: GET :8080/ reads one line from TCP <lab.db> and answers "was=NAME <that line>"
 *                      db:  TCP 3306 answers every connection with the line "db=NAME"
 *                      bastion: an SSH jump host (needs lab.sshkey); TCP forwarding is on in every guest
 *                      A web or WAS whose upstream fails answers HTTP 502 with the error in the body.
 *   lab.upstream=IP:PORT   the web's upstream (normally the WAS load balancer's VIP)
 *   lab.db=IP:PORT     the WAS's database
 *   lab.sshkey=TYPE:BASE64  run dropbear on port 22, root may log in with that key only
 *
 * Every guest serves on :80 and :8080: / ("hello from NAME", except the role's own port),
 * /health, /big (1 MiB), /cgi-bin/ip (client address), /cgi-bin/burn?seconds=N|stop (burn one
 * CPU), /cgi-bin/disks ("<name> <sectors>" per block device) and
 * /cgi-bin/disk?dev=vdb&op=write&data=TOKEN | ?dev=vdb&op=read (a token at the disk's start).
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

NAME=lab IP= GW= PROBE= ROLE= UPSTREAM= DB= SSHKEY=
# No globbing while splitting the command line: a value like "*" must stay a word.
set -f
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lab.name=*) NAME=\${arg#lab.name=} ;;
    lab.ip=*) IP=\${arg#lab.ip=} ;;
    lab.gw=*) GW=\${arg#lab.gw=} ;;
    lab.probe=*) PROBE=\${arg#lab.probe=} ;;
    lab.role=*) ROLE=\${arg#lab.role=} ;;
    lab.upstream=*) UPSTREAM=\${arg#lab.upstream=} ;;
    lab.db=*) DB=\${arg#lab.db=} ;;
    lab.sshkey=*) SSHKEY=\${arg#lab.sshkey=} ;;
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
set +f
IPV4='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
hostport() {
  echo "$1" | grep -Eq "^($IPV4\\.){3}$IPV4:[0-9]{1,5}$" || return 1
  p=\${1##*:}
  [ "$p" -ge 1 ] && [ "$p" -le 65535 ]
}
case "$NAME" in *[!A-Za-z0-9._-]*|'') log "ignoring unsafe lab.name"; NAME=lab ;; esac
case "$IP" in *[!0-9./]*) log "ignoring malformed lab.ip"; IP= ;; esac
case "$GW" in *[!0-9.]*) log "ignoring malformed lab.gw"; GW= ;; esac
case "$ROLE" in ''|web|was|db|bastion) ;; *) log "ignoring unknown lab.role (give web, was, db or bastion)"; ROLE= ;; esac
if [ -n "$UPSTREAM" ] && ! hostport "$UPSTREAM"; then log "ignoring malformed lab.upstream (give IP:PORT)"; UPSTREAM=; fi
if [ -n "$DB" ] && ! hostport "$DB"; then log "ignoring malformed lab.db (give IP:PORT)"; DB=; fi
sshkey_ok() {
  case "\${1%%:*}" in ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) ;; *) return 1 ;; esac
  b=\${1#*:}
  case "$b" in *[!A-Za-z0-9+/=]*) return 1 ;; esac
  [ \${#b} -ge 16 ] && [ \${#b} -le 4096 ]
}
if [ -n "$SSHKEY" ] && ! sshkey_ok "$SSHKEY"; then
  log "ignoring malformed lab.sshkey (give TYPE:BASE64, e.g. ssh-ed25519:AAAAC3...)"
  SSHKEY=
fi
# Every value here passed the checks above: the CGI scripts source this file.
printf 'LAB_NAME=%s\\nLAB_ROLE=%s\\nLAB_UPSTREAM=%s\\nLAB_DB=%s\\n' "$NAME" "$ROLE" "$UPSTREAM" "$DB" > /etc/lab.env
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
# The CGI scripts (ip, burn, disks, disk) come with the image in /www/cgi-bin.
# A role's own port serves the role's answer at / (busybox httpd runs cgi-bin/index.cgi when a
# directory has no index.html); the other port stays the plain test guest.
PLAIN80=/www PLAIN8080=/www
role_root() {
  mkdir -p /www-role/cgi-bin
  for f in health big; do ln /www/$f /www-role/$f; done
  for f in /www/cgi-bin/*; do ln "$f" "/www-role/cgi-bin/\${f##*/}"; done
  cp "/usr/lib/lab/$1.cgi" /www-role/cgi-bin/index.cgi
  chmod 755 /www-role/cgi-bin/index.cgi
}
case "$ROLE" in
  web) role_root web; PLAIN80=/www-role; [ -n "$UPSTREAM" ] || log "web without lab.upstream: / answers 502" ;;
  was) role_root was; PLAIN8080=/www-role; [ -n "$DB" ] || log "was without lab.db: / on 8080 answers 502" ;;
  db) nc -ll -p 3306 -e /usr/lib/lab/db-answer & ;;
  bastion) [ -n "$SSHKEY" ] || log "bastion without lab.sshkey: no SSH" ;;
esac
httpd -p 80 -h $PLAIN80
# A second listener, for tests of security groups that admit one port and refuse another.
httpd -p 8080 -h $PLAIN8080

if [ -n "$SSHKEY" ]; then
  mkdir -p /root/.ssh /etc/dropbear /dev/pts
  mount -t devpts devpts /dev/pts
  chmod 700 /root/.ssh
  echo "\${SSHKEY%%:*} \${SSHKEY#*:}" > /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
  K=/etc/dropbear/dropbear_ed25519_host_key
  if dropbearkey -t ed25519 -f $K >/dev/null 2>&1; then
    # -s: no password logins (root has none anyway); TCP forwarding stays on (bastion, ProxyJump).
    dropbear -s -E -p 22 -r $K && echo "LAB-SSH port=22 hostkey=$(dropbearkey -y -f $K | grep '^ssh-')"
  else
    log "dropbearkey failed: no SSH"
  fi
fi

if [ -n "$PROBE" ]; then
  (
    while :; do
      if out=$(timeout 3 wget -q -O - "$PROBE" 2>/dev/null); then echo "PROBE-OK $out"; else echo "PROBE-FAIL"; fi
      sleep 2
    done
  ) &
fi

READY="LAB-READY name=$NAME ip=$ADDR mac=$MAC"
echo "$READY"
# The same line on the first virtual terminal, so a VNC console shows it too.
echo "$READY" > /dev/tty0 2>/dev/null

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

const CGI_HEAD = `#!/bin/sh
# CRLF line ends: strict HTTP clients (Node's parser) refuse bare LF in headers.
ok() { printf 'Content-Type: text/plain\\r\\n\\r\\n'; [ $# -gt 0 ] && printf '%s\\n' "$*"; }
fail() { printf 'Status: %s\\r\\nContent-Type: text/plain\\r\\n\\r\\n%s\\n' "$1" "$2"; exit 0; }
`;

/** Files the image builder puts into the initramfs (path, mode, text), besides /init. */
export const GUEST_FILES: readonly { path: string; mode: number; text: string }[] = [
  {
    path: "www/cgi-bin/ip",
    mode: 0o755,
    text: `${CGI_HEAD}# The client address as the guest sees it (plain IPv4, without httpd's [::ffff:…] form).
a=\${REMOTE_ADDR#[}
a=\${a%]}
ok "\${a#::ffff:}"
`,
  },
  {
    path: "www/cgi-bin/burn",
    mode: 0o755,
    text: `${CGI_HEAD}# ?seconds=N burns one CPU for N seconds (1..600, default 60) in the background; ?stop stops it.
stop() {
  [ -f /run/burn.pid ] && kill "$(cat /run/burn.pid)" 2>/dev/null
  rm -f /run/burn.pid
}
case "$QUERY_STRING" in
  stop) stop; ok stopped; exit 0 ;;
  '') N=60 ;;
  seconds=[1-9]|seconds=[1-9][0-9]|seconds=[1-9][0-9][0-9]) N=\${QUERY_STRING#seconds=} ;;
  *) fail "400 Bad Request" "bad query: give ?seconds=N (1..600) or ?stop" ;;
esac
[ "$N" -le 600 ] || fail "400 Bad Request" "bad seconds $N: give 1..600"
stop
setsid timeout "$N" sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &
echo $! > /run/burn.pid
ok "burning $N"
`,
  },
  {
    path: "www/cgi-bin/disks",
    mode: 0o755,
    text: `${CGI_HEAD}# One line per block device: "<name> <size in 512-byte sectors>".
ok
for d in /sys/block/*; do
  [ -r "$d/size" ] && echo "\${d##*/} $(cat "$d/size")"
done
`,
  },
  {
    path: "www/cgi-bin/disk",
    mode: 0o755,
    text: `${CGI_HEAD}# ?dev=vdb&op=write&data=TOKEN writes TOKEN at the start of /dev/vdb; ?dev=vdb&op=read reads it back.
dev= op= data=
set -f
IFS='&'
for kv in $QUERY_STRING; do
  case "$kv" in
    dev=*) dev=\${kv#dev=} ;;
    op=*) op=\${kv#op=} ;;
    data=*) data=\${kv#data=} ;;
  esac
done
unset IFS
case "$dev" in ''|*[!a-z0-9]*) fail "400 Bad Request" "bad dev: give a block device name such as vdb" ;; esac
[ \${#dev} -le 16 ] && [ -e "/sys/block/$dev" ] && [ -b "/dev/$dev" ] || fail "404 Not Found" "no block device $dev"
case "$op" in
  write)
    case "$data" in ''|*[!A-Za-z0-9]*) fail "400 Bad Request" "bad data: give 1 to 64 letters or digits" ;; esac
    [ \${#data} -le 64 ] || fail "400 Bad Request" "bad data: give 1 to 64 letters or digits"
    printf '%s\\n' "$data" | dd of="/dev/$dev" bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null ||
      fail "500 Internal Server Error" "writing /dev/$dev failed"
    ok "wrote $data"
    ;;
  read)
    # Drop the cached copy: after a detach and re-attach the answer must come from the disk.
    blockdev --flushbufs "/dev/$dev" 2>/dev/null
    v=$(dd if="/dev/$dev" bs=512 count=1 2>/dev/null | head -n 1 | tr -cd 'A-Za-z0-9')
    ok "$v"
    ;;
  *) fail "400 Bad Request" "bad op: give op=read or op=write" ;;
esac
`,
  },
  {
    path: "usr/lib/lab/web.cgi",
    mode: 0o755,
    text: `${CGI_HEAD}. /etc/lab.env
[ -n "$LAB_UPSTREAM" ] || fail "502 Bad Gateway" "web=$LAB_NAME: no lab.upstream given"
if out=$(timeout 10 wget -q -O - "http://$LAB_UPSTREAM/" 2>&1); then
  line=$(printf '%s\\n' "$out" | head -n 1 | tr -d '\\r')
  ok "web=$LAB_NAME $line"
else
  fail "502 Bad Gateway" "web=$LAB_NAME: upstream http://$LAB_UPSTREAM/ failed: $out"
fi
`,
  },
  {
    path: "usr/lib/lab/was.cgi",
    mode: 0o755,
    text: `${CGI_HEAD}. /etc/lab.env
[ -n "$LAB_DB" ] || fail "502 Bad Gateway" "was=$LAB_NAME: no lab.db given"
line=$(timeout 10 nc -w 5 "\${LAB_DB%:*}" "\${LAB_DB##*:}" </dev/null 2>&1 | head -n 1 | tr -d '\\r')
case "$line" in
  db=*) ok "was=$LAB_NAME $line" ;;
  *) fail "502 Bad Gateway" "was=$LAB_NAME: database $LAB_DB failed: \${line:-no answer}" ;;
esac
`,
  },
  {
    path: "usr/lib/lab/db-answer",
    mode: 0o755,
    text: `#!/bin/sh
# The database role: one line per TCP connection on port 3306.
. /etc/lab.env
echo "db=$LAB_NAME"
`,
  },
  { path: "etc/passwd", mode: 0o644, text: "root:x:0:0:root:/root:/bin/sh\n" },
  { path: "etc/group", mode: 0o644, text: "root:x:0:\n" },
  { path: "etc/shells", mode: 0o644, text: "/bin/sh\n" },
];

/** Binaries copied with their shared libraries into the initramfs (from dropbear-bin). */
export const GUEST_BINARIES = ["/usr/sbin/dropbear", "/usr/bin/dropbearkey"] as const;

/** Modules the guest loads (dependencies are added and ordered by the image builder). */
export const GUEST_MODULES = ["virtio_pci", "virtio_net", "virtio_blk", "e1000", "button", "evdev"] as const;

/** Kernel command line the image is meant to boot with (the `lab.*` options go after it). */
export const GUEST_CMDLINE = "console=ttyS0 quiet panic=-1";
