#!/bin/sh
# PID 1 of every capsule. Under gVisor the runtime has already mounted /proc, /dev and /tmp, and every
# fork costs milliseconds there, so that path runs shell builtins only. A microVM guest mounts the rest itself.
if [ ! -e /proc/self/stat ]; then
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs dev /dev
  mkdir -p /dev/pts /dev/shm
  mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
  mount -t tmpfs -o mode=1777 shm /dev/shm
  mount -t tmpfs -o mode=1777 tmp /tmp
  mount -t tmpfs -o mode=755 run /run
  hostname capsule
  ip link set lo up
  # The host passes the guest's address on the kernel command line: wrenn.net=<address>/<prefix>,<gateway>.
  for arg in $(cat /proc/cmdline); do
    case "$arg" in
      wrenn.net=*) net="${arg#wrenn.net=}" ;;
      wrenn.id=*) WRENN_SANDBOX_ID="${arg#wrenn.id=}" ;;
    esac
  done
  if [ -n "$net" ]; then
    ip link set eth0 up && ip addr add "${net%,*}" dev eth0 && ip route add default via "${net#*,}"
  fi
  resize2fs /dev/vda >/dev/null 2>&1 &  # the capsule's disk may be larger than the template's filesystem
  echo "wrenn-init: starting envd" > /dev/console
fi
[ -d /run/wrenn ] || mkdir -p /run/wrenn
[ -n "$WRENN_SANDBOX_ID" ] && echo "$WRENN_SANDBOX_ID" > /run/wrenn/.WRENN_SANDBOX_ID
cd /usr/local/lib/wrenn || exit 1
exec /usr/bin/tini -s -- /usr/bin/python3 -s -m wrenn_server.envd --port 49983 --contain
