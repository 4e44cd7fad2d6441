#!/bin/busybox sh
# PID 1 of the guest's initramfs: load the 9p modules, mount the Debian root and the
# repository read-only, then hand over to tools/vm/guest-init.sh inside the real root.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs devtmpfs /dev
for m in /modules/*.ko; do insmod "$m" || echo "initramfs: insmod $m failed"; done
opts=trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro
mount -t 9p -o "$opts" rootfs /newroot || { echo "initramfs: cannot mount the root share"; poweroff -f; }
mount -t 9p -o "$opts" repo /newroot/mnt/repo || { echo "initramfs: cannot mount the repo share"; poweroff -f; }
umount /proc
exec switch_root /newroot /bin/bash /mnt/repo/tools/vm/guest-init.sh
