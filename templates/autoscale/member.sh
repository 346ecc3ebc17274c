#!/bin/sh
# kvmlab autoscale member command (docs/autoscale.md): the ONLY command the group agent's key
# may run on this host (authorized_keys: restrict,command="<this file>"). sshd puts what the
# client asked for in SSH_ORIGINAL_COMMAND; this accepts exactly
#   start <member> | stop <member> | state <member> | stats
# for the members listed in the `members` file beside it, and refuses anything else (exit 64).
set -u
# Every virsh call names the system libvirt (never a session daemon or $LIBVIRT_DEFAULT_URI).
V="virsh -c qemu:///system"
here=$(dirname "$0")
req=${SSH_ORIGINAL_COMMAND-"$*"}
refuse() { echo "kvmlab-asg-member: refused: $1 (allowed: start|stop|state <member>, stats)" >&2; exit 64; }
# No shell parsing of the request: split on single spaces, every word checked.
case $req in
  *[!a-z0-9\ -]*) refuse "unexpected characters" ;;
esac
set -f
set -- $req
set +f
allowed() { grep -qx -- "$1" "$here/members"; }
# The domain's owner marker must name the stack written beside this file (checked again here,
# at every start and stop: a domain of another stack that took a listed name is never touched).
owned() {
  st=$(head -n1 "$here/stack" 2>/dev/null) || return 1
  case $st in "" | *[!A-Za-z0-9._%@:/-]*) return 1 ;; esac
  m=$here/../../owners/server/$1.owner # /var/lib/kvmlab/asg/<group>/../../owners
  [ -f "$m" ] || return 1
  case $(head -n1 "$m") in "$st"/*) return 0 ;; esac
  return 1
}
case ${1-} in
  start | stop | state)
    [ $# -eq 2 ] || refuse "expected: $1 <member>"
    allowed "$2" || refuse "$2 is not a member of this group on this host"
    [ "$1" = state ] || owned "$2" || refuse "$2 is not a server of this group's stack (owner marker)"
    ;;
  stats) [ $# -eq 1 ] || refuse "stats takes no argument" ;;
  *) refuse "unknown verb ${1-}" ;;
esac
case $1 in
  start)
    st=$($V domstate "$2" 2>/dev/null)
    [ "$st" = running ] && exit 0
    exec $V -q start "$2"
    ;;
  stop)
    st=$($V domstate "$2" 2>/dev/null)
    [ "$st" = running ] || [ "$st" = paused ] || exit 0
    # The agent has drained it in the pool: power off (Heat deletes the member outright).
    exec $V -q destroy "$2"
    ;;
  state)
    # undefined: libvirtd answers and has no such domain; unknown: libvirtd did not answer.
    st=$($V domstate "$2" 2>/dev/null) || { $V list --all --name >/dev/null 2>&1 && st=undefined || st=unknown; }
    echo "$st" | head -n1 | tr ' ' '-'
    ;;
  stats)
    # Every domain's state and CPU time, filtered to this group's members (a name that is not
    # defined here is simply absent: the agent reads absence as not running). libvirtd not
    # answering is no answer, not "nothing runs": exit 69, and the agent leaves this host's
    # members as they were, as for an ssh that failed (review 10c).
    st=$($V domstats --state --cpu-total 2>/dev/null) || exit 69
    printf '%s\n' "$st" | awk -v list="$(tr '\n' ' ' < "$here/members")" '
      BEGIN { k = split(list, a, " "); for (i = 1; i <= k; i++) want[a[i]] = 1 }
      function out() { if (n != "" && (n in want)) print n, s, c }
      /^Domain: / { out(); n=$2; gsub(/\047/, "", n); s="undefined"; c=0 }
      /state.state=/ { split($0, v, "="); s = (v[2] == 1 ? "running" : (v[2] == 3 ? "paused" : "shut-off")) }
      /cpu.time=/ { split($0, v, "="); c = v[2] }
      END { out() }'
    ;;
esac
