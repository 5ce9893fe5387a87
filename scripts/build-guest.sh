#!/usr/bin/env bash
# Builds a small test guest for QEMU from Debian packages only (no network beyond apt):
#   OUT_DIR/vmlinux          Debian's 6.1 kernel, uncompressed ELF (boots ~2x faster
#                            than vmlinuz under TCG; has a PVH entry for -kernel)
#   OUT_DIR/initrd.cpio.gz   busybox-static + the virtio/ext4 modules + /init
#   OUT_DIR/kernel-version   the kernel release the modules belong to
# The result is cached: a second run with the same OUT_DIR returns at once.
#
# /init runs one shell script, taken from (first match wins):
#   - the kernel command line:  stellarium_cmd=<base64 of the script>
#   - a drive named on it:      stellarium_cmd_disk=vdb  (the script, NUL-padded)
# with the virtio and ext4 modules loaded, then powers the guest off. Its output goes
# to the serial console. One initramfs serves every test.
#
# Usage (root, apt configured): scripts/build-guest.sh OUT_DIR
# Needs: apt-get, dpkg-deb, xz, gzip, cpio, kmod (depmod/modprobe), busybox-static.
set -euo pipefail

out=${1:?usage: build-guest.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -s "$out/vmlinux" ] && [ -s "$out/initrd.cpio.gz" ] && [ -s "$out/kernel-version" ]; then
  echo "build-guest: cached in $out ($(cat "$out/kernel-version"))"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb xz gzip cpio depmod modprobe; do
  command -v "$tool" >/dev/null || { echo "build-guest: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
busybox=/bin/busybox
# busybox-static's binary has no program interpreter; the dynamic busybox's does.
if ! "$busybox" --list 2>/dev/null | grep -qx insmod || LC_ALL=C grep -qa '/lib64/ld-linux' "$busybox"; then
  echo "build-guest: $busybox is not busybox-static (apt-get install busybox-static)" >&2; exit 1
fi

scratch=$(mktemp -d /tmp/stellarium-guest.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"

# 1. The kernel package linux-image-amd64 points to, downloaded, not installed.
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6\.1/ {print $2; exit}')
if [ -z "$pkg" ]; then
  pkg=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9]+-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
fi
[ -n "$pkg" ] || { echo "build-guest: no linux-image-6.1*-amd64 package known to apt (run apt-get update)" >&2; exit 1; }
echo "build-guest: downloading $pkg"
apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null
deb=$(ls ./*.deb | head -1)
mkdir root
dpkg-deb -x "$deb" root
kver=$(ls root/lib/modules | head -1)
[ -n "$kver" ] || { echo "build-guest: $deb has no /lib/modules" >&2; exit 1; }

# 2. vmlinux: the xz stream inside vmlinuz starts at the magic FD 37 7A 58 5A 00.
vmlinuz=root/boot/vmlinuz-$kver
off=$(LC_ALL=C grep -obUaP '\xFD\x37\x7A\x58\x5A\x00' "$vmlinuz" | head -1 | cut -d: -f1)
[ -n "$off" ] || { echo "build-guest: no xz stream in $vmlinuz" >&2; exit 1; }
tail -c +$((off + 1)) "$vmlinuz" | xz -dc --single-stream > vmlinux 2>/dev/null || true
if [ "$(head -c 4 vmlinux | od -An -tx1 | tr -d ' ')" != "7f454c46" ]; then
  echo "build-guest: decompressing $vmlinuz at offset $off did not give an ELF file" >&2; exit 1
fi

# 3. Modules, in dependency order. modprobe --show-depends lists symbol dependencies
#    only: ext4 and jbd2 ask the crypto API for "crc32c" by name at mount time, so the
#    crc32c implementations must be listed explicitly (without them mounting ext4 fails
#    with "Cannot load crc32c driver"), before ext4.
depmod -b root "$kver"
mods=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio
      virtio_blk crc32c_generic crc32c-intel crc16 mbcache jbd2 ext4)
: > order.txt
for m in "${mods[@]}"; do
  modprobe -d root -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' >> order.txt || true
done
mkdir -p initrd/bin initrd/sbin initrd/proc initrd/sys initrd/dev initrd/mnt initrd/tmp initrd/modules
n=0
: > initrd/modules/order
while read -r path; do
  name=$(basename "$path")
  base=${name%.xz}; base=${base%.zst}
  [ -e "initrd/modules/$base" ] && continue
  case "$name" in
    *.ko.xz) xz -dc "$path" > "initrd/modules/$base" ;;
    *.ko.zst) echo "build-guest: zstd modules not supported" >&2; exit 1 ;;
    *) cp "$path" "initrd/modules/$base" ;;
  esac
  echo "$base" >> initrd/modules/order
  n=$((n + 1))
done < <(awk '!seen[$0]++' order.txt)
for need in virtio_blk.ko ext4.ko; do
  grep -qx "$need" initrd/modules/order || { echo "build-guest: $need not found in $pkg" >&2; exit 1; }
done
grep -q '^crc32c' initrd/modules/order || { echo "build-guest: no crc32c module in $pkg" >&2; exit 1; }

# 4. busybox and /init.
cp "$busybox" initrd/bin/busybox
cat > initrd/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod /modules/$m 2>/dev/null; done
cmd=""
disk=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    stellarium_cmd=*) cmd=${arg#stellarium_cmd=} ;;
    stellarium_cmd_disk=*) disk=${arg#stellarium_cmd_disk=} ;;
  esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ -n "$cmd" ]; then
  echo "$cmd" | base64 -d > /tmp/script.sh
elif [ -n "$disk" ]; then
  tr -d '\000' < /dev/$disk > /tmp/script.sh
fi
echo "STELLARIUM-GUEST: ready"
if [ -s /tmp/script.sh ]; then
  sh /tmp/script.sh
  echo "STELLARIUM-GUEST: script exit $?"
else
  echo "STELLARIUM-GUEST: no script given"
fi
sync
poweroff -f
INIT
chmod 755 initrd/init

(cd initrd && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > initrd.cpio.gz

# 5. Publish atomically into the cache.
cp vmlinux "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
cp initrd.cpio.gz "$out/initrd.cpio.gz.tmp" && mv "$out/initrd.cpio.gz.tmp" "$out/initrd.cpio.gz"
echo "$kver" > "$out/kernel-version.tmp" && mv "$out/kernel-version.tmp" "$out/kernel-version"
echo "build-guest: $out: kernel $kver, $n modules ($(tr '\n' ' ' < initrd/modules/order))"
