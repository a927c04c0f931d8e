#!/bin/busybox sh
# PID 1 of the kernel lab's guest (see lab.py and README.md).
#
# The initramfs holds: this script, a static busybox, the decompressed modules
# under /lib/lab/ and /lab.conf (written by lab.py for this one boot).  This script
#   1. loads the 9p stack and mounts the host's root read-only at /host and the
#      boot's output directory (a writable share) at /host/run/iotlb-lab;
#   2. loads the vDPA stack and vdpa_sim with the requested parameters and
#      creates the vdpa_sim_net device, which vhost_vdpa turns into /dev/vhost-vdpa-0;
#   3. runs the job (/host/run/iotlb-lab/job.sh, written by lab.py) chrooted into
#      /host, with its stdout/stderr in files of the output share, records its
#      exit status and powers off.
# Any failure before the job is recorded in lab-error and ends the boot.

/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /host /out
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

. /lab.conf

OUT=
say() { echo "lab-init: $*" > /dev/console; }
halt_now() {
	sync
	poweroff -f
	echo o > /proc/sysrq-trigger
	sleep 5
	exit 1
}
fail() {
	say "FAIL: $*"
	if [ -n "$OUT" ]; then
		echo "$*" > "$OUT/lab-error"
		dmesg > "$OUT/dmesg" 2>/dev/null
	fi
	halt_now
}
load() {  # load NAME [PARAMS...]: /lib/lab/NAME.ko
	m=$1; shift
	insmod "/lib/lab/$m.ko" "$@" || fail "insmod $m $* failed: $(dmesg | tail -n 3 | tr '\n' '|')"
}

# -- 1. shares ---------------------------------------------------------------
for m in $BOOT_MODULES; do load "$m"; done
P9="trans=virtio,version=9p2000.L,msize=$MSIZE"
mount -t 9p -o "$P9" labout /out || fail "cannot mount the output share"
OUT=/out
mount -t 9p -o "$P9,ro,cache=$ROOT_CACHE" hostroot /host || fail "cannot mount the host root"
for d in tmp run var/tmp; do
	mount -t tmpfs -o mode=1777 tmpfs "/host/$d" || fail "cannot mount tmpfs on /host/$d"
done
mkdir -p /host/run/iotlb-lab
mount -o bind /out /host/run/iotlb-lab || fail "cannot bind the output share"
OUT=/host/run/iotlb-lab
i=0
for p in $RW_PATHS; do
	mkdir -p "/host$p" 2>/dev/null
	mount -t 9p -o "$P9" "rw$i" "/host$p" || fail "cannot mount the writable share $p"
	i=$((i + 1))
done
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
for d in proc sys dev; do
	mount -o rbind "/$d" "/host/$d" || fail "cannot bind /$d into /host"
done

# -- 2. the vDPA stack ---------------------------------------------------------
for m in $VDPA_MODULES; do
	if [ "$m" = vdpa_sim ]; then
		# shellcheck disable=SC2086  # word splitting wanted: KEY=VAL parameters
		load vdpa_sim $VDPA_SIM_PARAMS
	else
		load "$m"
	fi
done
if [ -n "$VDPA_DEV" ]; then
	chroot /host /usr/sbin/vdpa dev add name "$VDPA_DEV" mgmtdev vdpasim_net \
		> "$OUT/vdpa-dev-add" 2>&1 || fail "vdpa dev add failed: $(cat "$OUT/vdpa-dev-add")"
	n=0
	while [ ! -c /dev/vhost-vdpa-0 ]; do
		n=$((n + 1))
		[ $n -gt 50 ] && fail "/dev/vhost-vdpa-0 did not appear"
		sleep 0.1
	done
fi
echo up > "$OUT/booted"

# -- 3. the job ----------------------------------------------------------------
chroot /host /usr/bin/env -i /bin/sh /run/iotlb-lab/job.sh \
	> "$OUT/stdout" 2> "$OUT/stderr" < /dev/null
echo $? > "$OUT/status.tmp"
dmesg > "$OUT/dmesg" 2>/dev/null
mv "$OUT/status.tmp" "$OUT/status"
halt_now
