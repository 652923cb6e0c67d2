#!/bin/bash
# The guest side of `cargo xtask vm` (see xtask/src/vm.rs).
#   guest.sh stage2         PID 1 after the initramfs: common setup, then either systemd
#                           (psb.mode=systemd) or the suite directly (psb.mode=plain)
#   guest.sh systemd-suite  the suite, run by pysandbox-matrix.service under systemd
# Each identity's results land in /mnt/results/<who>.json (a 9p share the host reads
# after qemu exits); /mnt/results/done marks a finished matrix.
set -u
arg() { sed -n "s/.*psb\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
REPO=$(arg repo)
MODE=$(arg mode)
R=/mnt/results
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "guest: $*" >/dev/console; }
DUID=2000 # an ordinary user with a delegated cgroup
PUID=2001 # an ordinary user without one

common_setup() {
  : >$R/booted # stage 2 reached (the host boots again a guest that never gets here)
  mount -t tmpfs -o mode=1777,size=1G tmpfs /tmp
  mkdir -p /scratch
  mount -t ext4 /dev/vda /scratch || say "no scratch disk"
  mkdir -p /opt/psb /scratch/home
  cp "$(arg bin)" /opt/psb/pysandbox
  # --baseline: another build, timed beside this one (cold_start).
  [ -n "$(arg base)" ] && cp "$(arg base)" /opt/psb/pysandbox-base
  cp "$REPO/xtask/vm/suite.py" /opt/psb/suite.py
  cp -r "$REPO/examples" /opt/psb/examples
  # The command, in a login session of tester (pam_systemd: a session scope, the user's
  # XDG_RUNTIME_DIR and bus).
  cat >/opt/psb/login-tester <<'EOS'
#!/bin/bash
exec runuser -l tester -c "$(printf '%q ' "$@")"
EOS
  chmod 755 /opt/psb/login-tester
  chmod -R a+rX /opt/psb
  useradd -M -d /scratch/home/tester -u $DUID -s /bin/bash tester
  useradd -M -d /scratch/home/plain -u $PUID -s /bin/bash plain
  for u in tester plain; do
    mkdir -p /scratch/home/$u && chown $u:$u /scratch/home/$u
  done
  # Homes are on ext4: as root pysandbox id-maps the caller's folders, and 9p and
  # overlayfs (before 6.3) cannot be id-mapped.
  export HOME=/scratch/home/root
  mkdir -p $HOME
  # root's first run builds the default image (a minute under TCG: a copy of the host's
  # would not do, its file stamps hold inode numbers, which 9p remaps); seed_cache then
  # gives the users copies.
}

# The default image, built once per boot by root's first run, copied into a user's
# image store (each build takes about a minute under TCG).
seed_cache() {
  local u=$1 home=/scratch/home/$1
  if [ -d /scratch/home/root/.local/share/pysandbox/store ]; then
    mkdir -p $home/.local/share
    cp -a /scratch/home/root/.local/share/pysandbox $home/.local/share/
    chmod 700 $home/.local $home/.local/share/pysandbox
    chown -R $u:$u $home/.local
  fi
}

# suite WHO EXPECT "[--quick] [--own]" -- COMMAND PREFIX...: runs the suite through the
# prefix (--own: runs must go under the identity's own delegated cgroup).
suite() {
  local who=$1 expect=$2 quick=$3
  # psb.quick=1 (cargo xtask vm --quick): the subset for every identity.
  [ "$(arg quick)" = 1 ] && quick="--quick $quick"
  [ "$(arg timing)" = 1 ] && quick="--timing $quick"
  shift 4
  local out=/tmp/result-$who.json
  say "identity $who (expects $expect)"
  local t0=$(date +%s)
  "$@" /usr/bin/python3 /opt/psb/suite.py --who "$who" --expect "$expect" --out "$out" $quick \
    </dev/null >/dev/console 2>&1
  say "identity $who: exit $? in $(( $(date +%s) - t0 )) s"
  if [ -s "$out" ]; then cp "$out" "$R/$who.json"; else
    echo "{\"who\":\"$who\",\"expect\":\"$expect\",\"checks\":[{\"name\":\"suite_ran\",\"ok\":false,\"detail\":\"no result file\",\"secs\":0}]}" >"$R/$who.json"
  fi
}

as_user() { # as_user UID: the command runs as that user with a clean environment
  local u=$1 name
  name=$(getent passwd "$u" | cut -d: -f1)
  echo setpriv --reuid="$u" --regid="$u" --clear-groups env -i PATH="$PATH" HOME=/scratch/home/$name USER=$name
}

finish() {
  echo "{\"kernel\":\"$(uname -r)\",\"mode\":\"$MODE\",\"uptime\":\"$(cut -d' ' -f1 /proc/uptime)\"}" >$R/done
  sync
  say "matrix done"
  echo o >/proc/sysrq-trigger
  sleep 30
}

plain_matrix() {
  mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
  mount -t tmpfs -o mode=0755 tmpfs /run
  local C=/sys/fs/cgroup
  # A systemd-like tree by hand: user@UID.service belongs to the user, with the
  # files /sys/kernel/cgroup/delegate lists, and memory pids cpu available in it.
  echo "+cpu +memory +pids" >$C/cgroup.subtree_control
  local D=$C/user.slice/user-$DUID.slice/user@$DUID.service
  mkdir -p $D
  echo "+cpu +memory +pids" >$C/user.slice/cgroup.subtree_control
  echo "+cpu +memory +pids" >$C/user.slice/user-$DUID.slice/cgroup.subtree_control
  chown $DUID:$DUID $D
  for f in $(cat /sys/kernel/cgroup/delegate); do chown $DUID:$DUID $D/$f 2>/dev/null; done
  if [ "$(arg old)" = 1 ]; then
    # Below pysandbox's minimum kernel: only that it is refused, at once.
    suite root refused "" --
    suite user_plain refused "" -- $(as_user $PUID)
    finish
  fi
  suite root cgroup_v2 "" --
  seed_cache tester
  seed_cache plain
  # In the delegated cgroup, as the user (the suite's own processes live there too:
  # pysandbox moves them into a leaf to enable controllers).
  suite user_delegated cgroup_v2 --own -- sh -c "echo \$\$ > $D/cgroup.procs && exec \"\$@\"" sh $(as_user $DUID)
  suite user_plain rlimit "" -- $(as_user $PUID)
  # The first delegated run left the controllers enabled in $D: its processes live in
  # the leaf from now on.
  suite userns_delegated cgroup_v2 "--quick --own" -- sh -c "echo \$\$ > $D/pysandbox-leaf/cgroup.procs && exec \"\$@\"" sh $(as_user $DUID) unshare -Ur
  finish
}

systemd_boot() {
  local U=/etc/systemd/system
  # Units that make no sense here (the host's services, gettys whose vhangup breaks
  # the serial console, timers, time sync).
  for u in console-getty.service serial-getty@ttyS0.service getty@tty1.service \
    systemd-timesyncd.service postgresql.service docker-registry.service apparmor.service \
    apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
    fstrim.timer logrotate.timer systemd-tmpfiles-clean.timer systemd-pstore.service \
    e2scrub_reap.service; do
    ln -sf /dev/null $U/$u
  done
  cat >$U/pysandbox-matrix.target <<EOF
[Unit]
Description=pysandbox host matrix
Requires=basic.target
Wants=pysandbox-matrix.service systemd-logind.service dbus.service
After=basic.target
AllowIsolate=yes
EOF
  cat >$U/pysandbox-matrix.service <<EOF
[Unit]
After=basic.target dbus.service systemd-logind.service systemd-user-sessions.service
[Service]
Type=oneshot
ExecStart=/bin/bash $REPO/xtask/vm/guest.sh systemd-suite
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
TimeoutStartSec=infinity
EOF
  exec /lib/systemd/systemd
}

systemd_matrix() {
  HOME=/scratch/home/root
  export HOME
  loginctl enable-linger tester
  for _ in $(seq 120); do
    systemctl is-active -q user@$DUID.service && break
    sleep 0.5
  done
  say "user@$DUID.service: $(systemctl is-active user@$DUID.service)"
  # Root in a service without delegation: pysandbox asks for a scope in pysandbox.slice.
  suite root cgroup_v2 "" --
  # Root in a unit with Delegate=yes: the unit's own subtree.
  suite root_delegated cgroup_v2 "--quick --own" -- systemd-run --wait --pipe --quiet -p Delegate=yes \
    -E HOME=$HOME
  seed_cache tester
  seed_cache plain
  # A login session (root-owned session scope): a scope from the user manager per run.
  suite user_session cgroup_v2 "" -- /opt/psb/login-tester
  # A delegated user unit.
  suite user_delegated cgroup_v2 "--quick --own" -- /opt/psb/login-tester \
    systemd-run --user --wait --pipe --quiet -p Delegate=yes
  # No session, no user manager: rlimits, and a warning for --cpus.
  suite user_plain rlimit "" -- $(as_user $PUID)
  suite userns_delegated cgroup_v2 "--quick --own" -- /opt/psb/login-tester \
    systemd-run --user --wait --pipe --quiet -p Delegate=yes unshare -Ur
  finish
}

case "${1:-}" in
stage2)
  common_setup
  if [ "$MODE" = systemd ]; then systemd_boot; else plain_matrix; fi
  ;;
systemd-suite)
  systemd_matrix
  ;;
esac
