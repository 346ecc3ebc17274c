#!/bin/sh
# kvmlab autoscale agent (docs/autoscale.md). Installed by the AutoscaleAgent resource into
# /var/lib/kvmlab/asg/<group>/ on the controller host with agent.conf beside it; `pulumi up`
# rewrites both. It applies Heat's rules (core/autoscale.ts is the same logic in TypeScript;
# the unit tests run both on the same cases):
#   - every INTERVAL s: CPU of the members in service (virsh domstats on their hosts, through
#     the forced-command key), each policy's alarm over its window, signals (alarm, `kvmlab asg
#     signal`, the program's desired size), Heat's cooldown, then start/stop of pre-rendered
#     members and their load balancer state (ready after the health check answers; drain,
#     then maint, then stop on the way out).
#   - every decision is one line in decisions.log with its inputs.
#   - one agent per group: a second one (an `up` racing a hand start, say) finds the first
#     alive (pid + start time + command line, checked and written under a short flock whose
#     descriptor no child inherits) and exits, logged.
#   - the group lock (group.lock, flock): the agent holds it for each evaluation, never while it
#     sleeps; a rolling replacement (`pulumi up` on a launch change) holds it for each step.
# Usage: agent.sh DIR                   run (the resource starts it detached)
#        agent.sh DIR roll-out MEMBER   before a launch change replaces MEMBER's server (the
#                                       AutoscaleRoll resource runs it on the controller)
#        agent.sh DIR roll-in MEMBER    after it: back in service if it was
#        agent.sh DIR reset MEMBER...|--all-failed
#                                       FAILED slots back to stopped (`kvmlab asg reset`)
#        ASG_LIB=1 . agent.sh           define the functions only (tests)
# Variables: sh has no locals (every variable is global), so each function prefixes its own
# with a tag of its name (_sm_ in start_members, _rc_ in reconcile_start, ...) and the main loop
# uses unprefixed ones: no call can move a caller's loop index or overwrite its values (review A1:
# a parallel start's pid loop once ended the policy loop).
set -u

# ---- Heat's rules (pure functions) ----------------------------------------------------------

# asg_new_capacity CURRENT ADJUSTMENT TYPE MIN_STEP MIN MAX -> prints the new capacity
asg_new_capacity() {
  _nc_c=$1 _nc_a=$2 _nc_t=$3 _nc_s=$4 _nc_lo=$5 _nc_hi=$6
  case $_nc_t in
    change_in_capacity) _nc_n=$((_nc_c + _nc_a)) ;;
    exact_capacity) _nc_n=$_nc_a ;;
    percent_change_in_capacity)
      _nc_p=$((_nc_c * _nc_a))
      if [ "$_nc_p" -gt -100 ] && [ "$_nc_p" -lt 100 ]; then
        if [ "$_nc_p" -gt 0 ]; then _nc_r=1; elif [ "$_nc_p" -lt 0 ]; then _nc_r=-1; else _nc_r=0; fi
      else
        _nc_r=$((_nc_p / 100))
      fi
      _nc_ar=${_nc_r#-}
      if [ "$_nc_s" -gt 0 ] && [ "$_nc_s" -gt "$_nc_ar" ]; then
        if [ "$_nc_r" -gt 0 ]; then _nc_r=$_nc_s; else _nc_r=$((0 - _nc_s)); fi
      fi
      _nc_n=$((_nc_c + _nc_r))
      ;;
    *) _nc_n=$_nc_c ;;
  esac
  [ "$_nc_n" -gt "$_nc_hi" ] && _nc_n=$_nc_hi
  [ "$_nc_n" -lt "$_nc_lo" ] && _nc_n=$_nc_lo
  echo "$_nc_n"
}

# asg_to_stop COUNT < lines "name state startedAt" -> names leaving first (failed, oldest, name)
asg_to_stop() {
  awk '$2=="failed"{print 0, $3, $1} $2=="running"{print 1, $3, $1}' | sort -k1,1n -k2,2n -k3,3 |
    head -n "$1" | awk '{print $3}'
}

# asg_to_start COUNT < lines "name state startedAt index" -> the lowest stopped slots
asg_to_start() {
  awk '$2=="stopped"{print $4, $1}' | sort -k1,1n | head -n "$1" | awk '{print $2}'
}

# asg_alarm_holds CMP VALUE THRESHOLD
asg_alarm_holds() {
  case $1 in
    gt) [ "$2" -gt "$3" ] ;;
    ge) [ "$2" -ge "$3" ] ;;
    lt) [ "$2" -lt "$3" ] ;;
    le) [ "$2" -le "$3" ] ;;
    *) return 1 ;;
  esac
}

[ "${ASG_LIB:-}" = 1 ] && return 0

# ---- the agent ------------------------------------------------------------------------------

DIR=${1:?usage: agent.sh DIR [roll-out|roll-in MEMBER]}
MODE=${2:-run}
cd "$DIR" || exit 1
. ./agent.conf
mkdir -p state samples requests
LOG=$DIR/decisions.log
# Seconds a roll-out waits for the group to come back to MIN before it refuses.
ROLL_WAIT=${ROLL_WAIT:-60}
# Appended to the action lines a rolling replacement logs (cause=roll).
CAUSE=""

now_ms() { date +%s%3N; }
log() { echo "ts=$(now_ms) $*" >> "$LOG"; }

# The start time of a process (field 22 of /proc/PID/stat, after the command name).
start_time() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }
# One agent per group: prints the pid of another live agent of this folder (same pid, same start
# time as recorded, working directory this folder, running agent.sh), or records this one.
# The flock is taken in a subshell whose descriptor closes when it ends: no child of the agent
# (a `sleep`, an `ssh`) ever holds it, so a killed agent's leftovers never block the next one.
claim_instance() {
  (
    flock -w 10 9 || { echo lock-timeout; exit 0; }
    _ci_p=$(cat agent.pid 2>/dev/null)
    case $_ci_p in "" | *[!0-9]*) _ci_p="" ;; esac
    if [ -n "$_ci_p" ] && [ "$_ci_p" != "$$" ] && [ -n "$(start_time "$_ci_p")" ] &&
      [ "$(start_time "$_ci_p")" = "$(cat agent.start 2>/dev/null)" ] &&
      [ "$(readlink "/proc/$_ci_p/cwd" 2>/dev/null)" = "$(pwd -P)" ] &&
      tr '\0' ' ' < "/proc/$_ci_p/cmdline" 2>/dev/null | grep -q 'agent[.]sh '; then
      echo "$_ci_p"
      exit 0
    fi
    start_time $$ > agent.start.tmp && mv -f agent.start.tmp agent.start
    echo $$ > agent.pid.tmp && mv -f agent.pid.tmp agent.pid
  ) 9>> agent.lock
}
# The group lock on fd 7 (bounded wait); released with `flock -u 7` (which frees it even where
# a child still has the descriptor).
group_lock() { exec 7>> "$DIR/group.lock" && flock -w "$1" 7; }
group_unlock() { flock -u 7 2>/dev/null; }
# Bound every remote call: a hung host never stalls the loop for long (TERM after 60 s, KILL 5 s
# later if ssh is still there). GNU timeout puts itself in a process group of its own (review
# A3), so a TERM/KILL to the agent's group (its stop) or to roll.sh's (the roll's outer timeout)
# does not reach an in-flight `timeout ssh`: it ends by itself within 65 s, and keeps fd 7 (the
# group lock) meanwhile, so the next agent or roll waits for it and never sees a half-done start.
# (`timeout --foreground` would keep ssh in the caller's group, but busybox's timeout lacks it.)
on_host() { # INDEX VERB [NAME]
  eval "_oh_addr=\$MEMBER_${1}_ADDR _oh_port=\$MEMBER_${1}_PORT _oh_user=\$MEMBER_${1}_USER"
  shift
  # -F /dev/null: no ssh_config at all (nothing in agent.conf can name one); -- ends options.
  timeout -k 5 60 ssh -F /dev/null -n -i "$DIR/agent_key" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=5 \
    -o UserKnownHostsFile="$DIR/known_hosts" -o StrictHostKeyChecking=yes -o LogLevel=ERROR \
    -p "$_oh_port" -- "$_oh_user@$_oh_addr" "$@"
}
# The members' stats as the member hosts report them, kept only when well-formed: a name that is
# one of this group's slots, a known state, digits for the CPU time (a host's answer is data,
# never a path or a command). The hosts are asked all at once (one bounded ssh each, issue 13:
# at start-up this is on the path to the first start); each answer goes to a file of its own
# (two answers on one pipe could interleave mid-line), read in host order once every ssh ended.
# The subshell's `wait` waits for its own children only, never for the agent's other children.
# A host that did not answer (its ssh failed or timed out: exit status beside its answer, review
# 10b P2) says nothing about its members: each of its slots is reported `<name> unreachable 0`,
# which every reader leaves as it was (not lost, not started), and listed in hosts.unreachable
# (startable() skips them). Logged once per outage (state/hostdown.<index>), and when it answers again.
member_stats() {
  (
    for _ms_h in $MEMBER_HOST_INDEXES; do
      { on_host "$_ms_h" stats > "$DIR/stats.$_ms_h.part" 2>/dev/null; echo $? > "$DIR/stats.$_ms_h.rc"; } &
    done
    wait
  )
  _ms_down=""
  for _ms_h in $MEMBER_HOST_INDEXES; do
    _ms_rc=$(cat "$DIR/stats.$_ms_h.rc" 2>/dev/null)
    rm -f "$DIR/stats.$_ms_h.rc"
    _ms_host=$(eval "echo \$MEMBER_${_ms_h}_HOST")
    if [ "$_ms_rc" = 0 ]; then
      [ -f "state/hostdown.$_ms_h" ] && { rm -f "state/hostdown.$_ms_h"; log "event=host-back host=$_ms_host"; }
      continue
    fi
    _ms_of=""
    _ms_i=0
    while [ "$_ms_i" -lt "$MAX" ]; do
      [ "$(eval "echo \$MEMBER_${_ms_i}_HOST")" = "$_ms_host" ] && _ms_of="$_ms_of $(member_name $_ms_i)"
      _ms_i=$((_ms_i + 1))
    done
    _ms_down="$_ms_down$_ms_of"
    [ -f "state/hostdown.$_ms_h" ] ||
      { : > "state/hostdown.$_ms_h"; log "event=host-unreachable host=$_ms_host rc=${_ms_rc:-none} members=$(echo $_ms_of | tr ' ' ',') note=members-left-as-they-were-logged-once"; }
  done
  echo $_ms_down | tr ' ' '\n' | sed '/^$/d' > hosts.unreachable.tmp && mv -f hosts.unreachable.tmp hosts.unreachable
  for _ms_h in $MEMBER_HOST_INDEXES; do cat "$DIR/stats.$_ms_h.part" 2>/dev/null; rm -f "$DIR/stats.$_ms_h.part"; done |
    awk -v names="$ALL_NAMES" -v down="$_ms_down" 'BEGIN { k = split(names, a, " "); for (i = 1; i <= k; i++) ok[a[i]] = 1
        k = split(down, d, " "); for (i = 1; i <= k; i++) delete ok[d[i]] }
      NF == 3 && ($1 in ok) && ($2 == "running" || $2 == "paused" || $2 == "shut-off") && $3 ~ /^[0-9]+$/ { print }'
  for _ms_n in $_ms_down; do echo "$_ms_n unreachable 0"; done
}
# member_table without the slots of a host that did not answer at the last member_stats: no
# start is tried there (its domain may run for all the agent knows).
startable() { member_table | awk -v down=" $(tr '\n' ' ' < hosts.unreachable 2>/dev/null) " 'index(down, " " $1 " ") == 0'; }
lb() { # haproxy runtime API command
  [ -n "$LB_SOCKET" ] || return 0
  echo "$1" | timeout 5 socat -t 2 stdio "unix-connect:$LB_SOCKET" 2>/dev/null
}
lb_state() { # NAME ready|drain|maint
  [ -n "$LB_SOCKET" ] || return 0
  lb "set server $LB_BACKEND/$1 state $2" >/dev/null
}
lb_sessions() { # NAME -> current sessions on that server
  [ -n "$LB_SOCKET" ] || { echo 0; return; }
  lb "show stat" | awk -F, -v b="$LB_BACKEND" -v s="$1" '$1==b && $2==s {print $5; f=1} END {if (!f) print 0}'
}
healthy() { # INDEX -> the member answers its health check (from the load balancer's namespace)
  # Bounded by timeout(1) only: Debian 12's busybox 1.35 wget segfaults when given -T.
  eval "_he_ip=\$MEMBER_${1}_IP"
  if [ -n "$LB_NS" ]; then
    ip netns exec "$LB_NS" timeout 4 busybox wget -q -O /dev/null "http://$_he_ip:$HEALTH_PORT$HEALTH_PATH" 2>/dev/null
  else
    on_host "$1" state "$(member_name "$1")" | grep -qx running
  fi
}
member_name() { eval "echo \$MEMBER_${1}_NAME"; }
index_of() { _io_i=0; while [ "$_io_i" -lt "$MAX" ]; do [ "$(member_name $_io_i)" = "$1" ] && { echo $_io_i; return; }; _io_i=$((_io_i + 1)); done; echo -1; }
mstate() { [ -f "state/$1" ] && awk '{print $1}' "state/$1" || echo stopped; }
mstarted() { [ -f "state/$1" ] && awk '{print $2}' "state/$1" || echo 0; }
set_mstate() {
  [ "$2" = failed ] || rm -f "state/$1.offfail" # stop_failed's note ends with the FAILED mark
  rm -f "state/$1.create" "state/$1.paused" # the create's mark and dead_starts' note end with it
  echo "$2 $3" > "state/$1.tmp" && mv -f "state/$1.tmp" "state/$1"
}
member_table() { # "name state startedAt index" for every slot
  _mt_i=0
  while [ "$_mt_i" -lt "$MAX" ]; do
    _mt_n=$(member_name $_mt_i)
    echo "$_mt_n $(mstate "$_mt_n") $(mstarted "$_mt_n") $_mt_i"
    _mt_i=$((_mt_i + 1))
  done
}
in_service() { member_table | awk '$2=="running"{print $1}'; }
count_running() { member_table | awk '$2=="running"{n++} END{print n+0}'; }
# The group's size for its decisions (scalings, MIN and MAX): the members in service and the
# slots still `starting`. Under the group lock a `starting` slot is one whose start died and
# whose host did not answer since (dead_starts leaves it so): its guest may run, so it is counted
# (review 10c: not counted, keep_bounds started one more meanwhile, one over desired until the
# host answered). In-service figures (status size, a roll's min) stay count_running.
count_members() { member_table | awk '$2=="running" || $2=="starting" {n++} END{print n+0}'; }
getv() { [ -f "state/$1" ] && cat "state/$1" || echo "$2"; }
setv() { echo "$2" > "state/$1.tmp" && mv -f "state/$1.tmp" "state/$1"; }

# Start members, wait for each to answer its health check, then put it in the pool. The start
# commands run all at once (one ssh each, so two guests of a scaling boot side by side, issue
# 13), each bounded by on_host's timeout (65 s at most, even when the agent or a roll is killed
# meanwhile: see on_host); only this call's own children are waited for, each by its pid; their
# results are logged in member order, and a failed start marks that slot FAILED.
start_members() { # names...
  _sm_spids=""
  _sm_t=$(now_ms)
  for _sm_n in "$@"; do
    _sm_k=$(index_of "$_sm_n")
    set_mstate "$_sm_n" starting 0
    lb_state "$_sm_n" maint
    rm -f "state/$_sm_n.start"
    (
      if on_host "$_sm_k" start "$_sm_n" >/dev/null 2>>"$DIR/agent.err"; then _sm_r=ok; else _sm_r="failed rc=$?"; fi
      echo "$_sm_r" > "state/$_sm_n.start"
    ) &
    _sm_spids="$_sm_spids $!"
  done
  for _sm_sp in $_sm_spids; do wait "$_sm_sp"; done
  _sm_t=$(($(now_ms) - _sm_t)) # how long the start commands took (ssh + virsh start), logged
  for _sm_n in "$@"; do
    _sm_k=$(index_of "$_sm_n")
    _sm_r=$(cat "state/$_sm_n.start" 2>/dev/null)
    [ -n "$_sm_r" ] || _sm_r="failed rc=none"
    if [ "$_sm_r" = ok ]; then
      log "event=action action=start member=$_sm_n host=$(eval "echo \$MEMBER_${_sm_k}_HOST") start_ms=$_sm_t$CAUSE"
    else
      log "event=action action=start member=$_sm_n result=failed reason=start-command-failed ${_sm_r#failed }$CAUSE"
      set_mstate "$_sm_n" failed "$(date +%s)"
    fi
    rm -f "state/$_sm_n.start"
  done
  await_health "$@"
}

# Wait (at most BOOT_TIMEOUT) for members in state `starting` to answer their health check: each
# joins the pool when it answers; one that does not in time is marked FAILED (still in maint).
# Each round checks every member left at once (issue 13: a guest still booting does not answer
# ARP, so its check takes its full 4 s; one after the other, that delayed the next member's entry
# by as much), each check's result in a file of its own (written whole: tmp, then mv). The round
# polls those files every 0.2 s and puts each member in service as soon as its own result says
# ok (review 10b P1: without a load balancer namespace a check is an ssh of up to 65 s, which
# must not hold back a member that already answered); members whose results came in the same
# poll are taken in member order. The poll is bounded (70 s: every check is bounded by 65 s);
# a check with no result by then counts as not healthy. Only this round's checks are waited for,
# each by its pid.
await_health() { # names...
  _ah_deadline=$(($(date +%s) + BOOT_TIMEOUT))
  _ah_left=$*
  while [ -n "$_ah_left" ]; do
    _ah_next=""
    _ah_pids=""
    _ah_wait=""
    for _ah_n in $_ah_left; do
      [ "$(mstate "$_ah_n")" = starting ] || continue
      rm -f "state/$_ah_n.health" "state/$_ah_n.health.tmp"
      (
        if healthy "$(index_of "$_ah_n")"; then _ah_r=ok; else _ah_r=no; fi
        echo "$_ah_r" > "state/$_ah_n.health.tmp" && mv -f "state/$_ah_n.health.tmp" "state/$_ah_n.health"
      ) &
      _ah_pids="$_ah_pids $!"
      _ah_wait="$_ah_wait $_ah_n"
    done
    _ah_polls=0
    while [ -n "$_ah_wait" ]; do
      _ah_still=""
      for _ah_n in $_ah_wait; do
        if [ ! -f "state/$_ah_n.health" ] && [ "$_ah_polls" -lt 350 ]; then
          _ah_still="$_ah_still $_ah_n"
          continue
        fi
        _ah_ok=$(cat "state/$_ah_n.health" 2>/dev/null)
        rm -f "state/$_ah_n.health"
        if [ "$_ah_ok" = ok ]; then
          lb_state "$_ah_n" ready
          set_mstate "$_ah_n" running "$(date +%s)"
          rm -f "samples/$_ah_n"
          log "event=action action=in-service member=$_ah_n health=ok pool=${LB_BACKEND:-none}$CAUSE"
        else
          _ah_next="$_ah_next $_ah_n"
        fi
      done
      _ah_wait=${_ah_still# }
      [ -n "$_ah_wait" ] || break
      sleep 0.2
      _ah_polls=$((_ah_polls + 1))
    done
    for _ah_p in $_ah_pids; do wait "$_ah_p"; done
    for _ah_n in $_ah_left; do rm -f "state/$_ah_n.health" "state/$_ah_n.health.tmp"; done
    _ah_left=${_ah_next# }
    [ -z "$_ah_left" ] && break
    if [ "$(date +%s)" -ge "$_ah_deadline" ]; then
      for _ah_n in $_ah_left; do
        set_mstate "$_ah_n" failed "$(date +%s)"
        log "event=action action=failed member=$_ah_n reason=no-health-within-${BOOT_TIMEOUT}s$CAUSE"
      done
      break
    fi
    write_status # `kvmlab asg status` shows the members starting while they boot
    sleep 1
  done
}

# Take members out: drain in the pool, wait for their sessions (bounded), maint, then stop.
stop_members() { # names...
  for _sp_n in "$@"; do lb_state "$_sp_n" drain; done
  for _sp_n in "$@"; do
    log "event=action action=drain member=$_sp_n pool=${LB_BACKEND:-none}$CAUSE"
  done
  _sp_deadline=$(($(date +%s) + DRAIN_TIMEOUT))
  sleep 1
  for _sp_n in "$@"; do
    while [ "$(lb_sessions "$_sp_n")" -gt 0 ] && [ "$(date +%s)" -lt "$_sp_deadline" ]; do sleep 1; done
    lb_state "$_sp_n" maint
    _sp_k=$(index_of "$_sp_n")
    if on_host "$_sp_k" stop "$_sp_n" >/dev/null 2>>"$DIR/agent.err"; then
      log "event=action action=stop member=$_sp_n sessions=$(lb_sessions "$_sp_n")$CAUSE"
      set_mstate "$_sp_n" stopped 0
      rm -f "samples/$_sp_n"
    else
      # Its guest probably still runs (review 10c: marked stopped, the group then believed it
      # was one smaller than it was and could start another). It stays `running`, counted and
      # back in the pool (haproxy's own check takes it out if it does not answer); the next
      # decision that wants it gone tries again.
      _sp_rc=$?
      lb_state "$_sp_n" ready
      log "event=action action=stop member=$_sp_n result=failed reason=stop-command-failed rc=$_sp_rc state=running pool=ready$CAUSE"
    fi
  done
}

# A member that failed its start or its health check (a scaling, a roll's spare or roll-in, review
# R4), or a FAILED slot found running: never left running out of the pool. It never joined the
# pool (start_members keeps it in maint until it answers), so it is powered off at once and stays
# marked FAILED. FAILED is kept until the slot is reset (review N3; Heat replaces a FAILED member
# with a new one, it never restarts it in place): no scale-out, no restoration of MIN and no
# roll's spare starts it; an agent restart keeps the mark; the slot's next roll (a launch change:
# its new server is the replacement) or `kvmlab asg reset` (reset_failed) clears it. The
# decision is logged with its reason; a power-off that keeps failing (retried at every evaluation
# while the domain runs) is logged once per reason (review A5: state/<m>.offfail holds the last
# one logged; a success clears it).
stop_failed() { # MEMBER REASON
  lb_state "$1" maint
  _sf_k=$(index_of "$1")
  if on_host "$_sf_k" stop "$1" >/dev/null 2>>"$DIR/agent.err"; then
    rm -f "state/$1.offfail"
    log "event=action action=stop member=$1 reason=$2 state=failed$CAUSE"
  elif [ "$(getv "$1.offfail" "")" != "$2" ]; then
    setv "$1.offfail" "$2"
    log "event=action action=stop member=$1 reason=$2 state=failed result=failed note=retried-each-interval-logged-once$CAUSE"
  fi
  set_mstate "$1" failed "$(date +%s)"
  rm -f "samples/$1"
}

# Bring the group to SIZE members in service (Heat's member order). FAILED slots are neither
# counted nor started (review N3): a scale-out takes the lowest stopped slots instead, as Heat
# replaces a FAILED member with a new one; a scale-in takes members in service (a FAILED slot is
# already out of the pool and off). A member that fails to start here is powered off at once.
resize() { # SIZE
  _rs_cur=$(count_members)
  if [ "$1" -gt "$_rs_cur" ]; then
    _rs_up=$(startable | asg_to_start $(($1 - _rs_cur)))
    if [ "$(echo $_rs_up | wc -w)" -lt $(($1 - _rs_cur)) ]; then no_slot_note "$1" "$_rs_cur"; else setv last_no_slot ""; fi
    start_members $_rs_up
    for _rs_n in $_rs_up; do
      [ "$(mstate "$_rs_n")" = failed ] && stop_failed "$_rs_n" unhealthy-at-start
    done
  elif [ "$1" -lt "$_rs_cur" ]; then
    # Only members whose host answered at the last member_stats are chosen (review 10c: a stop
    # on a silent host fails while its guest probably runs); the others wait for their host.
    _rs_down=$(startable | awk '$2=="running"' | asg_to_stop $((_rs_cur - $1)))
    if [ "$(echo $_rs_down | wc -w)" -lt $((_rs_cur - $1)) ]; then scale_in_wait_note "$1" "$_rs_cur"; else setv last_scale_in_wait ""; fi
    [ -z "$_rs_down" ] || stop_members $_rs_down
  fi
  return 0
}

# A scale-in that cannot take as many members as it wants because the others are on hosts that
# did not answer: logged once until the reason changes (the alarm repeats it every interval).
scale_in_wait_note() { # WANT CURRENT
  _sw_held=$(member_table | awk '$2=="running" || $2=="starting"' | awk -v down=" $(tr '\n' ' ' < hosts.unreachable 2>/dev/null) " 'index(down, " " $1 " ") > 0 {printf "%s%s", s, $1; s=","}')
  _sw_why="want=$1 current=$2 waiting=$_sw_held"
  [ "$(getv last_scale_in_wait "")" = "$_sw_why" ] && return 0
  setv last_scale_in_wait "$_sw_why"
  log "event=short reason=scale-in-waits-for-host $_sw_why note=members-of-silent-hosts-not-chosen-logged-once"
}

# Too few stopped slots for a scale-out (the others in service, FAILED or rolling): logged once
# until the reason changes (keep_bounds would otherwise log it every interval).
# With FAILED slots among them, the line ends with the command that gives them back (review A4:
# `fix='kvmlab asg reset <group> <member>'`, or `--all-failed` for several, with
# `--controller <host>` when agent.conf names it: review 9b G5), quoted, last.
no_slot_note() { # WANT CURRENT
  _ns_failed=$(member_table | awk '$2=="failed"{printf "%s%s", s, $1; s=","}')
  _ns_why="want=$1 current=$2 stopped=$(member_table | awk '$2=="stopped"{n++} END{print n+0}') failed=$_ns_failed"
  [ "$(getv last_no_slot "")" = "$_ns_why" ] && return 0
  setv last_no_slot "$_ns_why"
  case $_ns_failed in
    "") _ns_fix="" ;;
    *,*) _ns_fix=" fix='kvmlab asg reset $GROUP --all-failed${CONTROLLER:+ --controller $CONTROLLER}'" ;;
    *) _ns_fix=" fix='kvmlab asg reset $GROUP $_ns_failed${CONTROLLER:+ --controller $CONTROLLER}'" ;;
  esac
  log "event=short reason=no-startable-slot $_ns_why$_ns_fix"
}

# CPU: one sample per member in service per tick, "t_ms cpu_ns" lines, the last KEEP kept.
sample_cpu() {
  _sc_t=$(now_ms)
  member_stats > stats.tmp
  while read -r _sc_n _sc_st _sc_cpu; do
    if [ "$(mstate "$_sc_n")" = failed ] && [ "$_sc_st" = running ]; then
      # FAILED is off (its power-off failed, or it came up after its start command failed).
      stop_failed "$_sc_n" failed-still-running
      continue
    fi
    [ "$_sc_st" = unreachable ] && continue # its host did not answer: left as it was
    [ "$(mstate "$_sc_n")" = running ] || continue
    if [ "$_sc_st" != running ]; then
      # Gone underneath the agent (crashed, destroyed by hand): Heat counts only live members.
      lb_state "$_sc_n" maint
      set_mstate "$_sc_n" stopped 0
      rm -f "samples/$_sc_n"
      log "event=member-lost member=$_sc_n domain=$_sc_st"
      continue
    fi
    echo "$_sc_t $_sc_cpu" >> "samples/$_sc_n"
    tail -n "$KEEP" "samples/$_sc_n" > "samples/$_sc_n.tmp" && mv -f "samples/$_sc_n.tmp" "samples/$_sc_n"
  done < stats.tmp
}

# avg_cpu PERIOD_S -> "<avg percent> <members counted>" or "none 0" (insufficient data).
# A member counts once its samples span the window (less one interval of slack).
avg_cpu() {
  _av_now=$(now_ms)
  _av_need=$((($1 - INTERVAL) * 1000))
  _av_sum=0 _av_cnt=0
  for _av_n in $(in_service); do
    [ -f "samples/$_av_n" ] || continue
    _av_r=$(awk -v now="$_av_now" -v w="$(($1 * 1000))" -v need="$_av_need" '
      { t[NR]=$1; c[NR]=$2 }
      END { if (NR < 2) exit; last=NR; first=0
            for (i=1;i<=NR;i++) if (t[i] >= now - w) { first=i; break }
            if (first == 0 || first == last) exit
            dt=t[last]-t[first]; if (dt < need || dt <= 0) exit
            printf "%d\n", (c[last]-c[first]) / (dt * 10000) }' "samples/$_av_n")
    [ -n "$_av_r" ] || continue
    _av_sum=$((_av_sum + _av_r)) _av_cnt=$((_av_cnt + 1))
  done
  if [ "$_av_cnt" -eq 0 ]; then echo "none 0"; else echo "$((_av_sum / _av_cnt)) $_av_cnt"; fi
}

# Heat's adjust(): one signal for policy P (index) from SOURCE, received at RECEIVED_MS.
signal() { # P SOURCE RECEIVED_MS INPUTS
  eval "_sg_pn=\$POLICY_${1}_NAME _sg_pt=\$POLICY_${1}_TYPE _sg_pa=\$POLICY_${1}_ADJ _sg_pc=\$POLICY_${1}_COOLDOWN _sg_ps=\$POLICY_${1}_STEP"
  _sg_cur=$(count_members)
  _sg_cd_end=$(getv cooldown_end 0)
  _sg_nows=$(date +%s)
  _sg_base="policy=$_sg_pn source=$2 $4 current=$_sg_cur type=$_sg_pt adjustment=$_sg_pa cooldown=$_sg_pc cooldown_end=$_sg_cd_end"
  if [ "$3" -lt "$(getv scaling_finished_ms 0)" ] && [ "$3" -ge "$(getv scaling_started_ms 0)" ]; then
    log "event=ignored reason=scaling-in-progress $_sg_base"
    return
  fi
  if [ "$_sg_nows" -lt "$_sg_cd_end" ]; then
    [ "$2" = alarm ] && [ "$(getv last_ignored "")" = "$_sg_pn" ] && return
    setv last_ignored "$_sg_pn"
    log "event=ignored reason=in-cooldown remaining=$((_sg_cd_end - _sg_nows))s $_sg_base"
    return
  fi
  _sg_new=$(asg_new_capacity "$_sg_cur" "$_sg_pa" "$_sg_pt" "$_sg_ps" "$MIN" "$MAX")
  if [ "$_sg_new" -eq "$_sg_cur" ]; then
    [ "$2" = alarm ] && [ "$(getv last_ignored "")" = "nochange-$_sg_pn" ] && return
    setv last_ignored "nochange-$_sg_pn"
    log "event=ignored reason=no-change new=$_sg_new $_sg_base"
    return
  fi
  setv last_ignored ""
  log "event=decision $_sg_base new=$_sg_new"
  scale_to "$_sg_new" "$_sg_pc"
}

scale_to() { # NEW COOLDOWN_S
  setv scaling_started_ms "$(now_ms)"
  setv scaling_finished_ms 9999999999999
  _st_before=$(count_members)
  resize "$1"
  _st_after=$(count_members)
  setv scaling_finished_ms "$(now_ms)"
  setv size "$_st_after"
  if [ "$_st_after" -ne "$_st_before" ]; then
    _st_end=$(($(date +%s) + $2))
    _st_prev=$(getv cooldown_end 0)
    [ "$_st_prev" -gt "$_st_end" ] && _st_end=$_st_prev
    setv cooldown_end "$_st_end"
    log "event=scaled from=$_st_before to=$_st_after cooldown_end=$_st_end"
  else
    log "event=scaled from=$_st_before to=$_st_after cooldown_end=$(getv cooldown_end 0) note=size-unchanged-no-cooldown"
  fi
}

# The logs stay bounded: past 1 MiB, the last 5000 lines are kept (both are opened per write).
trim_logs() {
  for _tl_f in decisions.log agent.err; do
    [ -f "$_tl_f" ] && [ "$(wc -c < "$_tl_f")" -gt 1048576 ] && tail -n 5000 "$_tl_f" > "$_tl_f.tmp" && mv -f "$_tl_f.tmp" "$_tl_f"
  done
  return 0
}

write_status() {
  trim_logs
  {
    echo "group=$GROUP"
    echo "pid=$(cat agent.pid 2>/dev/null)"
    echo "updated_ms=$(now_ms)"
    echo "size=$(count_running)"
    echo "min=$MIN"
    echo "max=$MAX"
    echo "cooldown_end=$(getv cooldown_end 0)"
    echo "desired_generation=$(getv desired_gen 0)"
    echo "avg_cpu=${AVG:-none}"
    member_table | awk '{print "member=" $1 " " $2 " " $3}'
  } > status.tmp && mv -f status.tmp status
}

# Start-up: what runs now is the truth (the agent may have been restarted); put the pool in step.
reconcile_start() {
  _rc_t=$(now_ms)
  member_stats > stats.tmp
  _rc_stats=$(($(now_ms) - _rc_t))
  _rc_i=0
  while [ "$_rc_i" -lt "$MAX" ]; do
    _rc_n=$(member_name $_rc_i)
    _rc_st=$(awk -v n="$_rc_n" '$1==n {print $2}' stats.tmp)
    if [ "$(mstate "$_rc_n")" = rolling ]; then
      : # a rolling replacement holds it out of service (roll-in brings it back)
    elif [ "$(mstate "$_rc_n")" = starting ]; then
      : # the agent stopped while it booted (review N3): dead_starts below
    elif [ "$(mstate "$_rc_n")" = failed ]; then
      # FAILED stays FAILED across a restart (review L3): no scale-out starts it, and it never
      # goes back into the pool. Still running (its power-off failed): powered off again.
      if [ "$_rc_st" = running ]; then
        stop_failed "$_rc_n" still-running-at-agent-start
      else
        lb_state "$_rc_n" maint
      fi
    elif [ "$_rc_st" = unreachable ]; then
      : # its host did not answer (logged by member_stats): left as it was, not lost, not started
    elif [ "$_rc_st" = running ]; then
      if [ "$(mstate "$_rc_n")" != running ]; then set_mstate "$_rc_n" running "$(date +%s)"; fi
      lb_state "$_rc_n" ready
    else
      [ "$(mstate "$_rc_n")" = stopped ] || log "event=member-lost member=$_rc_n domain=${_rc_st:-unknown}"
      set_mstate "$_rc_n" stopped 0
      lb_state "$_rc_n" maint
    fi
    _rc_i=$((_rc_i + 1))
  done
  dead_starts at-agent-start
  # began_ms: the process's start; locked_ms: when it held the group lock; stats_ms: how long the
  # member hosts took to answer (issue 13: where the time before the first start goes).
  log "event=agent-start pid=$$ size=$(count_running) members=$(in_service | tr '\n' ',') began_ms=$AGENT_BEGAN locked_ms=$AGENT_LOCKED stats_ms=$_rc_stats"
}

# Slots left `starting` by a start that died (an agent or a roll.sh killed while a member booted;
# review N3 at start-up, A2 at every evaluation). Every start_members runs under the group lock and
# ends each member running or FAILED before it unlocks, so a `starting` slot seen by a holder of
# the group lock belongs to a dead start. Its domain runs: treated as a fresh start (maint until
# it answers its health check, else FAILED and powered off). It does not: stopped (logged).
# Reads stats.tmp (member_stats of this evaluation). WHEN names the occasion in the log.
# A slot the AutoscaleAgent create marked and started (a fresh group's first members, started
# before the agent: `state/<m>.create` beside the mark) is the same case, logged as what it is:
# reason=started-at-create (and unhealthy-at-create), whatever WHEN is.
dead_starts() { # WHEN
  _ds_boot="" _ds_made=""
  for _ds_n in $(member_table | awk '$2=="starting"{print $1}'); do
    _ds_st=$(awk -v n="$_ds_n" '$1==n {print $2}' stats.tmp)
    [ "$_ds_st" = unreachable ] && continue # its host did not answer: still `starting`, checked next time
    _ds_why=starting-$1
    [ -f "state/$_ds_n.create" ] && _ds_why=started-at-create
    if [ "$_ds_st" = paused ] && [ "$_ds_why" = started-at-create ] && [ "$(cat "state/$_ds_n.create" 2>/dev/null)" = unknown ]; then
      # A create start with no known outcome whose domain is paused (review 12d N3b): libvirt
      # starts a domain paused and resumes it once it is set up, and the create found every slot
      # off (neither running nor paused) before it started any, so this is most likely its
      # `virsh start` still under way (the create's call was abandoned, not the start). Treated
      # like a silent host: left `starting` and counted, checked again at the next evaluation
      # (running: health wait; off: FAILED). Not for ever: paused for BOOT_TIMEOUT s since first
      # seen (paused by hand, or on an I/O error), it is handled as not running (FAILED, powered
      # off). The first sighting is logged and kept in state/<m>.paused.
      _ds_since=$(getv "$_ds_n.paused" "")
      case $_ds_since in "" | *[!0-9]*)
        setv "$_ds_n.paused" "$(date +%s)"
        log "event=start-pending member=$_ds_n domain=paused was=starting reason=started-at-create create=unknown wait_s=$BOOT_TIMEOUT note=checked-each-evaluation"
        continue ;;
      esac
      [ $(($(date +%s) - _ds_since)) -lt "$BOOT_TIMEOUT" ] && continue
    fi
    lb_state "$_ds_n" maint
    if [ "$_ds_st" != running ] && [ "$_ds_why" = started-at-create ] && [ "$(cat "state/$_ds_n.create" 2>/dev/null)" = unknown ]; then
      # The create's start has no known outcome (review 12c N6, 12d N2: its call to the host
      # failed, or the create ended before it recorded the answer): its virsh start may still come
      # and boot the guest later. FAILED, not stopped: a FAILED slot found running is powered off at
      # every evaluation (failed-still-running), a stopped one would run untracked.
      log "event=member-lost member=$_ds_n domain=${_ds_st:-unknown} was=starting reason=started-at-create create=unknown"
      stop_failed "$_ds_n" create-start-unknown
    elif [ "$_ds_st" != running ]; then
      log "event=member-lost member=$_ds_n domain=${_ds_st:-unknown} was=starting reason=$_ds_why"
      set_mstate "$_ds_n" stopped 0
    elif [ "$_ds_why" = started-at-create ]; then
      _ds_made="$_ds_made $_ds_n"
    else
      _ds_boot="$_ds_boot $_ds_n"
    fi
  done
  [ -n "$_ds_boot$_ds_made" ] || return 0
  [ -z "$_ds_made" ] || log "event=health-wait members=$(echo $_ds_made | tr ' ' ',') reason=started-at-create"
  [ -z "$_ds_boot" ] || log "event=health-wait members=$(echo $_ds_boot | tr ' ' ',') reason=starting-$1"
  await_health $_ds_made $_ds_boot
  for _ds_n in $_ds_made; do
    [ "$(mstate "$_ds_n")" = failed ] && stop_failed "$_ds_n" unhealthy-at-create
  done
  for _ds_n in $_ds_boot; do
    [ "$(mstate "$_ds_n")" = failed ] && stop_failed "$_ds_n" "unhealthy-$1"
  done
  return 0
}

# The program's desired size (written by `pulumi up` when it changes): Heat's group update.
program_desired() {
  [ -f requests/desired ] || return
  read -r _pd_gen _pd_want < requests/desired
  [ "$_pd_gen" = "$(getv desired_gen 0)" ] && return
  setv desired_gen "$_pd_gen"
  _pd_cur=$(count_members)
  _pd_want=$(asg_new_capacity "$_pd_cur" "$_pd_want" exact_capacity 0 "$MIN" "$MAX")
  log "event=decision source=program desired=$_pd_want generation=$_pd_gen current=$_pd_cur min=$MIN max=$MAX cooldown=$COOLDOWN"
  scale_to "$_pd_want" "$COOLDOWN"
  # Heat: a create or update of the group starts a cooldown even without a size change.
  _pd_end=$(($(date +%s) + COOLDOWN))
  [ "$(getv cooldown_end 0)" -gt "$_pd_end" ] && _pd_end=$(getv cooldown_end 0)
  setv cooldown_end "$_pd_end"
}

# Keep the group inside [MIN, MAX] (a lost member below MIN is replaced, as an update would).
keep_bounds() {
  _kb_cur=$(count_members)
  if [ "$_kb_cur" -lt "$MIN" ]; then
    # Nothing to start (every other slot FAILED or rolling): said once, no decision every interval.
    [ -z "$(startable | asg_to_start 1)" ] && { no_slot_note "$MIN" "$_kb_cur"; return 0; }
    log "event=decision source=min current=$_kb_cur min=$MIN new=$MIN"
    scale_to "$MIN" 0
  elif [ "$_kb_cur" -gt "$MAX" ]; then
    log "event=decision source=max current=$_kb_cur max=$MAX new=$MAX"
    scale_to "$MAX" 0
  fi
}

# ---- rolling replacement (Heat's rolling_update; `pulumi up` runs these on a launch change) ----
# The slot being replaced is "rolling": not in service, never started by a scale-out, never
# stopped by a scale-in, not "lost" when its domain is redefined or gone. state/<m>.roll holds
# "<was in service 0|1> <surge member or empty>" until roll-in.

roll_refuse() { # CODE MESSAGE
  log "event=roll-refused reason=$(echo "$2" | cut -d: -f1 | tr ' ' '-') member=$ROLL_MEMBER in_service=$(count_running) min=$MIN$CAUSE"
  echo "autoscale group $GROUP: $2" >&2
  exit "$1"
}

# Before MEMBER's server changes: take it out of service, never leaving fewer than MIN in service.
roll_out() { # MEMBER
  _ro_rk=$(index_of "$1")
  _ro_end=""
  while :; do
    if [ -z "$_ro_end" ]; then
      group_lock 600 || roll_refuse 75 "the group lock ($DIR/group.lock) stayed held for 600 s; nothing was changed. Fix: see kvmlab asg status $GROUP, then run up again"
    else
      # Waiting below MIN: the lock wait counts against the same wall-clock deadline.
      _ro_left=$((_ro_end - $(date +%s)))
      [ "$_ro_left" -lt 1 ] && _ro_left=1
      group_lock "$_ro_left" || roll_refuse 65 "below min: the group did not come back to its min $MIN within ${ROLL_WAIT}s (the group lock stayed held), so no member is taken out for the launch change ($1 waits; nothing was changed). Fix: let the agent bring the group back to $MIN (kvmlab asg status $GROUP shows why it is not), then run up again"
    fi
    _ro_rst=$(mstate "$1")
    if [ "$_ro_rst" = rolling ]; then
      # Taken out by an earlier up that failed after this step: it is still out, nothing to do.
      log "event=roll-out member=$1 was=rolling note=already-out$CAUSE"
      return 0
    fi
    if [ "$_ro_rst" != running ]; then
      # Not in service (stopped, or a FAILED or still-starting member, which may run): keep it
      # from the pool and off, so no scale-out starts it while its server changes.
      lb_state "$1" maint
      # A power-off that fails (its host silent, say) leaves a guest that may run: marked rolling
      # it would no longer be counted (review 11b), so the roll-out refuses, nothing changed.
      if [ "$_ro_rst" != stopped ] && ! on_host "$_ro_rk" stop "$1" >/dev/null 2>>"$DIR/agent.err"; then
        roll_refuse 76 "stop failed: the power-off of $1 (it is $_ro_rst, so its guest may run) failed on its host $(eval "echo \$MEMBER_${_ro_rk}_HOST") (see $DIR/agent.err); $1 stays $_ro_rst, nothing was changed. Fix: make that host answer the controller, then run up again"
      fi
      echo "0 " > "state/$1.roll"
      set_mstate "$1" rolling 0
      rm -f "samples/$1"
      log "event=roll-out member=$1 was=$_ro_rst in_service=$(count_running) min=$MIN$CAUSE"
      write_status
      return 0
    fi
    _ro_rcur=$(count_running)
    [ "$_ro_rcur" -ge "$MIN" ] && break
    # Below MIN (Heat updates nothing then): let the agent bring it back, bounded in wall-clock time.
    [ -z "$_ro_end" ] && _ro_end=$(($(date +%s) + ROLL_WAIT))
    if [ "$(date +%s)" -ge "$_ro_end" ]; then
      # A slot still `starting` on a host that does not answer counts toward min (count_members),
      # so the agent starts no other slot in its place: say which, and what brings it back.
      _ro_held=$(member_table | awk '$2=="starting"' | awk -v down=" $(tr '\n' ' ' < hosts.unreachable 2>/dev/null) " 'index(down, " " $1 " ") > 0 {print $1 ":" $4}' |
        while IFS=: read -r _ro_hn _ro_hk; do printf '%s still starting on %s; ' "$_ro_hn" "$(eval "echo \$MEMBER_${_ro_hk}_HOST")"; done)
      if [ -n "$_ro_held" ]; then
        roll_refuse 65 "below min: $_ro_rcur members in service, below its min $MIN, so no member is taken out for the launch change ($1 waits; nothing was changed); ${_ro_held%; } (a host that did not answer at the agent's last evaluation): the agent counts such a slot toward min, so it starts no other slot and in service stays below min while that host is silent. Fix: make that host answer the controller (the agent then health-checks the slot), then run up again"
      fi
      roll_refuse 65 "below min: $_ro_rcur members in service, below its min $MIN, so no member is taken out for the launch change ($1 waits; nothing was changed). Fix: let the agent bring the group back to $MIN (kvmlab asg status $GROUP shows why it is not), then run up again"
    fi
    group_unlock
    _ro_left=$((_ro_end - $(date +%s)))
    [ "$_ro_left" -gt 5 ] && _ro_left=5
    [ "$_ro_left" -lt 1 ] && _ro_left=1
    sleep "$_ro_left"
  done
  _ro_surge=""
  if [ $((_ro_rcur - 1)) -lt "$MIN" ]; then
    # Taking it out would leave fewer than MIN in service: a stopped slot goes in first (Heat's
    # min_in_service: a new member before an old one leaves).
    _ro_surge=$(startable | asg_to_start 1)
    [ -n "$_ro_surge" ] ||
      roll_refuse 66 "no spare slot: taking $1 out would leave $((_ro_rcur - 1)) members in service, below min $MIN, and every other slot is in service or being replaced ($1 stays in service; nothing was changed). Fix: raise max by one (a spare slot), then run up again"
    log "event=roll-surge member=$_ro_surge for=$1 in_service=$_ro_rcur min=$MIN$CAUSE"
    start_members "$_ro_surge"
    if [ "$(mstate "$_ro_surge")" != running ]; then
      stop_failed "$_ro_surge" spare-unhealthy
      roll_refuse 67 "spare failed: $_ro_surge did not pass its health check within ${BOOT_TIMEOUT}s; it was stopped and is marked FAILED, and $1 stays in service (nothing else was changed). Fix: see $_ro_surge's serial log, then run up again"
    fi
  fi
  stop_members "$1"
  if [ "$(mstate "$1")" = running ]; then
    # Its stop failed (logged by stop_members; its host did not carry it out): it stays in
    # service, so the spare that stood in for it leaves again and nothing is replaced.
    _ro_spare="no spare was started"
    if [ -n "$_ro_surge" ]; then
      stop_members "$_ro_surge"
      if [ "$(mstate "$_ro_surge")" = stopped ]; then
        _ro_spare="the spare $_ro_surge was stopped again"
      else
        _ro_spare="the spare $_ro_surge stays in service (its power-off failed too)"
      fi
    fi
    roll_refuse 76 "stop failed: the power-off of $1 failed on its host (see $DIR/agent.err and decisions.log); $1 stays in service and $_ro_spare, nothing else was changed. Fix: make $1's host answer the controller, then run up again"
  fi
  echo "1 $_ro_surge" > "state/$1.roll"
  set_mstate "$1" rolling 0
  log "event=roll-out member=$1 was=running in_service=$(count_running) min=$MIN surge=${_ro_surge:-none}$CAUSE"
  write_status
}

# After MEMBER's server changed: back in service (health check, then the pool) if it was.
roll_in() { # MEMBER
  group_lock 600 || roll_refuse 75 "the group lock ($DIR/group.lock) stayed held for 600 s; $1 is still out of service. Fix: see kvmlab asg status $GROUP, then run up again"
  if [ ! -f "state/$1.roll" ]; then
    [ "$(mstate "$1")" = rolling ] && set_mstate "$1" stopped 0
    log "event=roll-in member=$1 note=not-rolling$CAUSE"
    return 0
  fi
  read -r _ri_rwas _ri_surge < "state/$1.roll"
  if [ "$_ri_rwas" = 1 ]; then
    set_mstate "$1" stopped 0
    start_members "$1"
    if [ "$(mstate "$1")" != running ]; then
      rm -f "state/$1.roll"
      stop_failed "$1" unhealthy-after-change
      roll_refuse 68 "unhealthy after the change: $1 did not pass its health check within ${BOOT_TIMEOUT}s with its new launch configuration; it was stopped and is marked FAILED (the agent replaces it from the spare slots) and ${_ri_surge:-no spare} stays in service. Fix: see $1's serial log, correct the launch change, run up again"
    fi
    # The spare that stood in for it leaves again (Heat: the group returns to its capacity).
    [ -n "$_ri_surge" ] && [ "$(mstate "$_ri_surge")" = running ] && stop_members "$_ri_surge"
  else
    set_mstate "$1" stopped 0
  fi
  rm -f "state/$1.roll"
  log "event=roll-in member=$1 was_in_service=$_ri_rwas in_service=$(count_running) min=$MIN$CAUSE"
  write_status
}

# ---- reset of FAILED slots (`kvmlab asg reset`, review A4) -----------------------------------
# Heat heals a FAILED member by "mark unhealthy, then stack update": the update replaces it with
# a new server, which the group then counts. The agent makes no server, so the reset gives the
# slot itself back once its cause is fixed: FAILED -> stopped, under the group lock. The agent's
# next evaluation starts it if the group is below MIN and it is among the lowest stopped slots
# (keep_bounds); otherwise the next scale-out may. The reset starts nothing itself (a start
# needs the health wait and the pool, which belong to an evaluation). Refused, nothing changed,
# for a name that is not a slot (69), a slot that is not FAILED (70), a domain that is not shut
# off (running, idle, paused, in shutdown, pmsuspended, crashed) or whose host cannot say or
# answers something else (71: the agent retries a failed power-off at every evaluation), or a
# slot whose server is not defined on its host (72).
reset_failed() { # MEMBER... | --all-failed
  if [ "${1:-}" = --all-failed ]; then
    _rt_list=$(member_table | awk '$2=="failed"{print $1}' | tr '\n' ' ')
    [ -n "$_rt_list" ] || { echo "group $GROUP has no FAILED slot: nothing to reset"; return 0; }
  else
    _rt_list=$*
  fi
  _rt_rc=0 _rt_done=""
  for _rt_n in $_rt_list; do
    _rt_k=$(index_of "$_rt_n")
    if [ "$_rt_k" -lt 0 ]; then
      echo "$_rt_n is not a slot of group $GROUP (its slots: ${ALL_NAMES% }); nothing was changed" >&2
      _rt_rc=69
      continue
    fi
    _rt_h=$(eval "echo \$MEMBER_${_rt_k}_HOST")
    _rt_s=$(mstate "$_rt_n")
    if [ "$_rt_s" != failed ]; then
      case $_rt_s in
        running) _rt_why="it is in service" ;;
        stopped) _rt_why="it is stopped, already startable (the agent starts it when the group needs it)" ;;
        starting) _rt_why="it is being started (it ends in service or FAILED)" ;;
        rolling) _rt_why="a launch change has it out of service (its roll-in brings it back)" ;;
        *) _rt_why="its state is $_rt_s" ;;
      esac
      echo "$_rt_n is not FAILED: $_rt_why; only a FAILED slot is reset, nothing was changed" >&2
      _rt_rc=70
      continue
    fi
    if ! _rt_d=$(on_host "$_rt_k" state "$_rt_n" 2>>"$DIR/agent.err") || [ -z "$_rt_d" ] || [ "$_rt_d" = unknown ]; then
      echo "$_rt_n: could not ask its host $_rt_h whether its domain is off (see $DIR/agent.err), so it stays FAILED. Fix: make $_rt_h reachable from the controller, then reset again" >&2
      _rt_rc=71
      continue
    fi
    # Only an answer that says "off" resets (review 9b G1): anything else is refused, and only a
    # known state word is ever echoed or logged (a host's answer is data: two lines or key=value
    # text must not become decisions.log lines).
    case $_rt_d in
      shut-off) ;;
      undefined)
        echo "$_rt_n: its host $_rt_h has no domain $_rt_n (its server was deleted or never created), so there is nothing to start and it stays FAILED. Fix: run pulumi up for the group's stack (it creates the slot's server again; a launch change's roll clears FAILED), then reset again" >&2
        _rt_rc=72
        continue
        ;;
      running | idle | paused | in-shutdown | pmsuspended | crashed | no-state)
        case $_rt_d in
          running | idle | paused) _rt_why="its power-off failed: the agent retries it at every evaluation, see decisions.log" ;;
          in-shutdown) _rt_why="it is shutting down" ;;
          pmsuspended) _rt_why="its guest suspended it, the domain is still active; power it off on $_rt_h (virsh destroy $_rt_n)" ;;
          *) _rt_why="the domain is not shut off (a crashed domain kept by on_crash=preserve is still active; power it off on $_rt_h: virsh destroy $_rt_n)" ;;
        esac
        echo "$_rt_n: its domain is still $_rt_d on $_rt_h ($_rt_why), so it stays FAILED. Fix: reset it once it is shut off" >&2
        _rt_rc=71
        continue
        ;;
      *)
        echo "$_rt_n: its host $_rt_h answered something that is not a domain state (not logged; a member.sh of another kvmlab version?), so it stays FAILED. Fix: run pulumi up (it installs this kvmlab's member command), then reset again" >&2
        _rt_rc=71
        continue
        ;;
    esac
    set_mstate "$_rt_n" stopped 0
    rm -f "samples/$_rt_n"
    log "event=reset member=$_rt_n was=failed domain=$_rt_d host=$_rt_h by=kvmlab-asg-reset"
    echo "reset $_rt_n (host $_rt_h, domain $_rt_d): FAILED -> stopped"
    _rt_done="$_rt_done $_rt_n"
  done
  [ -n "$_rt_done" ] || return "$_rt_rc"
  # The status file keeps the last evaluation's average CPU (review 9b G4: AVG is the run loop's).
  AVG=$(sed -n 's/^avg_cpu=//p' status 2>/dev/null | head -n1)
  case $AVG in none | *[!0-9.]*) AVG="" ;; esac
  write_status
  _rt_cur=$(count_running)
  if [ "$_rt_cur" -lt "$MIN" ]; then
    _rt_next=$(member_table | asg_to_start $((MIN - _rt_cur)) | tr '\n' ' ')
    echo "next: $_rt_cur in service, below min $MIN: the agent's next evaluation starts ${_rt_next% } (the lowest stopped slots), each joining the pool after its health check"
  else
    echo "next: $_rt_cur in service (min $MIN, max $MAX): the agent starts nothing now; a reset slot is a stopped slot again, which a scale-out may start (lowest slot first)"
  fi
  return "$_rt_rc"
}

ALL_NAMES=$(_i=0; while [ "$_i" -lt "$MAX" ]; do member_name $_i; _i=$((_i + 1)); done | tr '\n' ' ')
case $MODE in
  roll-out | roll-in)
    ROLL_MEMBER=${3:-}
    [ "$(index_of "$ROLL_MEMBER")" -ge 0 ] || { echo "agent.sh $MODE: ${ROLL_MEMBER:-(none)} is not a slot of group $GROUP ($ALL_NAMES)" >&2; exit 64; }
    CAUSE=" cause=roll"
    if [ "$MODE" = roll-out ]; then roll_out "$ROLL_MEMBER"; else roll_in "$ROLL_MEMBER"; fi
    group_unlock
    exit 0
    ;;
  reset)
    shift 2
    [ $# -gt 0 ] || { echo "agent.sh reset: name the FAILED slots, or --all-failed" >&2; exit 69; }
    group_lock "${RESET_WAIT:-60}" || { echo "autoscale group $GROUP: the group lock ($DIR/group.lock) stayed held for ${RESET_WAIT:-60} s (the agent or a roll is starting or stopping members); nothing was changed. Fix: run the reset again" >&2; exit 75; }
    reset_failed "$@"
    _reset_rc=$?
    group_unlock
    exit "$_reset_rc"
    ;;
  run) ;;
  *) echo "agent.sh: unknown mode $MODE (run, roll-out, roll-in, reset)" >&2; exit 64 ;;
esac
AGENT_BEGAN=$(now_ms)
_other=$(claim_instance)
if [ "$_other" = lock-timeout ]; then
  # Not proof of another agent (review R6): say so, with its own exit code.
  log "event=agent-exit reason=instance-lock-timeout pid=$$"
  echo "the agent of group $GROUP could not take its single-instance lock ($DIR/agent.lock) within 10 s; this one ($$) exits (exit 4: not another agent; start it again)" >&2
  exit 4
fi
if [ -n "$_other" ]; then
  log "event=agent-exit reason=another-agent-runs pid=$$ other=$_other"
  echo "the agent of group $GROUP already runs (pid $_other); this one ($$) exits" >&2
  exit 3
fi
# A roll-out or roll-in may hold the group lock while a member boots: each wait is bounded by
# that (logged when exceeded), and the agent never evaluates without the lock, at start-up either.
LOCK_WAIT=${LOCK_WAIT:-$((BOOT_TIMEOUT + DRAIN_TIMEOUT + 60))}
until group_lock "$LOCK_WAIT"; do log "event=lock-wait-exceeded seconds=$LOCK_WAIT phase=start"; done
AGENT_LOCKED=$(now_ms)
# A killed agent's leftover answers (review 10b P3; harmless in this 0700 folder, but untidy).
rm -f stats.*.part stats.*.rc
reconcile_start
program_desired
keep_bounds
group_unlock
while :; do
  _tick=$(date +%s)
  if ! group_lock "$LOCK_WAIT"; then
    log "event=lock-wait-exceeded seconds=$LOCK_WAIT"
    continue
  fi
  # A slot still `starting` now belongs to a dead start (review A2: a killed roll.sh).
  if member_table | awk '$2=="starting"{f=1} END{exit !f}'; then
    member_stats > stats.tmp
    dead_starts after-dead-start
  fi
  program_desired
  for _f in requests/signal.*; do
    [ -f "$_f" ] || continue
    _rest=${_f#requests/signal.}
    _pname=${_rest%.*}
    _rcv=${_rest##*.}
    rm -f "$_f"
    _pol=0 _found=-1
    while [ "$_pol" -lt "$NPOLICIES" ]; do
      [ "$(eval "echo \$POLICY_${_pol}_NAME")" = "$_pname" ] && _found=$_pol
      _pol=$((_pol + 1))
    done
    if [ "$_found" -ge 0 ]; then
      signal "$_found" manual "$_rcv" "by=kvmlab-asg-signal"
    else
      log "event=ignored reason=unknown-policy policy=$_pname source=manual"
    fi
  done
  sample_cpu
  AVG=none
  # _pol: no function uses it (every function's variables carry its own prefix, see the top).
  _pol=0
  while [ "$_pol" -lt "$NPOLICIES" ]; do
    eval "_cmp=\$POLICY_${_pol}_CMP _thr=\$POLICY_${_pol}_THRESHOLD _per=\$POLICY_${_pol}_PERIOD"
    if [ "$_per" -gt 0 ]; then
      set -- $(avg_cpu "$_per")
      AVG=$1
      if [ "$1" != none ] && asg_alarm_holds "$_cmp" "$1" "$_thr"; then
        signal "$_pol" alarm "$(now_ms)" "cpu_avg=$1 members_measured=$2 window=${_per}s alarm=$_cmp$_thr"
      fi
    fi
    _pol=$((_pol + 1))
  done
  keep_bounds
  write_status
  group_unlock
  _wait=$((_tick + INTERVAL - $(date +%s)))
  [ "$_wait" -gt 0 ] && sleep "$_wait"
done
