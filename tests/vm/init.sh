#!/bin/busybox sh
# PID 1 of a lab guest (no root fs, no udev, no init system). Kernel command line:
#   lab.id=I       this guest's number (1..N): hostname nodeI, address 10.99.0.I
# Network: one virtio NIC per peer, each a point-to-point UDP link in qemu's socket network. The NIC to
# peer J has MAC 52:54:00:99:<I>:<J> (hex). The guest has 10.99.0.I on every NIC and a host route to each
# peer through its link, so every node has one address that all peers reach.
# Control: /dev/ttyS1 carries the harness protocol (see lab.py); ttyS0 is the kernel console (logged).
/bin/busybox mkdir -p /bb /proc /sys /dev /run /tmp
/bin/busybox --install -s /bb
export PATH=/usr/sbin:/usr/bin:/bb
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run/lock /var/lock
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp

ID=1
DRBD=84
for a in $(cat /proc/cmdline); do
    case "$a" in
        lab.id=*) ID=${a#lab.id=} ;;
        lab.drbd=*) DRBD=${a#lab.drbd=} ;;
    esac
done
hostname "node$ID"
echo "node$ID" >/etc/hostname

t0=$(cut -d' ' -f1 /proc/uptime)
while read -r m; do
    # The DRBD 9 flavour (lab.drbd=9): the kernel's own drbd (8.4) stays unloaded; the modules built by
    # tests/vm/build-drbd9.sh come in the harness's second cpio under /usr/lib/drbd9.
    [ "$DRBD" = 9 ] && [ "${m##*/}" = drbd.ko ] && continue
    insmod "$m" 2>/tmp/insmod.err || echo "lab-init: insmod $m failed: $(cat /tmp/insmod.err)"
done </etc/lab-modules
if [ "$DRBD" = 9 ]; then
    for m in handshake drbd drbd_transport_tcp; do
        insmod "/usr/lib/drbd9/$m.ko" 2>/tmp/insmod.err || echo "lab-init: insmod /usr/lib/drbd9/$m.ko failed: $(cat /tmp/insmod.err)"
    done
fi
echo "lab-init: modules loaded at ${t0}s..$(cut -d' ' -f1 /proc/uptime)s"

# What a Debian boot does through udev (pvscan autoactivation): activate the VGs on the disk, so a guest
# that boots again (after a kill) finds its LVs like a real node does. No-op on the first boot.
vgchange -aay --sysinit >/tmp/vgchange.log 2>&1 || echo "lab-init: vgchange -aay failed: $(cat /tmp/vgchange.log)"

ip link set lo up
ip addr add 127.0.0.1/8 dev lo 2>/dev/null
for n in /sys/class/net/eth*; do
    [ -e "$n" ] || continue
    dev=${n##*/}
    mac=$(cat "$n/address")
    case "$mac" in
        52:54:00:99:*) ;;
        *) continue ;;
    esac
    peer=$((0x${mac##*:}))
    ip link set "$dev" up
    ip addr add "10.99.0.$ID/32" dev "$dev"
    ip route add "10.99.0.$peer/32" dev "$dev"
    echo "lab-init: $dev -> node$peer (10.99.0.$peer)"
done

# Host directories shared over 9p: the cluster store (tag "store") and a scratch/log directory (tag
# "share") that outlives a killed guest. (mount_tag ends with a NUL byte.)
tags=$(cat /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag 2>/dev/null | tr '\0' '\n')
for tag in store share; do
    if echo "$tags" | grep -qx "$tag"; then
        mkdir -p "/$tag"
        mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none "$tag" "/$tag" \
            && echo "lab-init: /$tag mounted"
    fi
done

# Extra files appended by the harness as a second cpio (drbdpool binary, Perl shim): a hook to run.
[ -x /lab/boot.sh ] && /lab/boot.sh

# The control channel: one command per line, "<id> <base64 command> <timeout seconds>". The reply:
#   @@LAB-BEGIN <id>\n<base64 stdout>\n@@LAB-ERR <id>\n<base64 stderr>\n@@LAB-END <id> <rc>\n
# base64 both ways: no quoting problems, no marker collisions, no tty mangling.
ctl() {
    stty -F /dev/ttyS1 raw -echo 115200 2>/dev/null
    exec </dev/ttyS1 >/dev/ttyS1 2>&1
    echo "@@LAB-READY node$ID"
    while read -r id b64 tmo; do
        [ -n "$id" ] || continue
        echo "$b64" | base64 -d >/tmp/cmd.$id 2>/dev/null
        cd /root
        timeout -s KILL "${tmo:-600}" sh /tmp/cmd.$id </dev/null >/tmp/out.$id 2>/tmp/err.$id
        rc=$?
        cd /
        echo "@@LAB-BEGIN $id"
        base64 </tmp/out.$id
        echo "@@LAB-ERR $id"
        base64 </tmp/err.$id
        echo "@@LAB-END $id $rc"
        rm -f /tmp/cmd.$id /tmp/out.$id /tmp/err.$id
    done
}
ctl &
echo "lab-init: node$ID ready at $(cut -d' ' -f1 /proc/uptime)s"
# PID 1 must not exit; reap orphans.
while true; do sleep 3600; done
