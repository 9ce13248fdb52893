#!/usr/bin/env bash
# Build Swiftlet's guest initramfs: an UNCOMPRESSED newc cpio holding the
# static init (init.c, as /init), a static busybox (/bin/busybox plus a
# symlink per applet) and the /dev/console node.
#
# Usage: Guests/initramfs/build-initramfs.sh [-h|--help]
#
# Environment:
#   SWIFTLET_CACHE       cache root, default /var/cache/swiftlet.
#   SWIFTLET_INIT_LIBC   C library for the static init: musl (default, via
#                        musl-gcc from musl-tools, which drives the system gcc)
#                        or glibc (plain gcc -static).  The musl init is ~50 KB,
#                        the glibc one ~690 KB; on the development host every
#                        100 KB of initramfs costs ~0.8 s of emulated unpacking.
#   SWIFTLET_INITRAMFS_BUSYBOX
#                        1 (default): include busybox and its applet links.
#                        0: /init and /dev/console only (~50 KB).  For boot-time
#                        measurements on the development host, where busybox's
#                        2 MB take ~19 s to unpack (Run /init at ~21 s instead
#                        of ~41 s) and user space cannot run anyway.  Without
#                        busybox there is no /bin/sh: give init an absolute
#                        command after "--", or it reports the failure and
#                        powers off.
#
# Output: $SWIFTLET_CACHE/initramfs-<key>.cpio, where <key> is a short sha256
# of init.c, this script, the busybox-static package version and the two
# choices above; it is only rebuilt when one of them changes.  A stable
# symlink points to the last one requested: $SWIFTLET_CACHE/initramfs.cpio
# (with busybox) or $SWIFTLET_CACHE/initramfs-minimal.cpio (without).
#
# stdout: the cpio path on the LAST line.  Everything else goes to stderr.
#
# Why uncompressed: on a software-KVM host (the development host) the
# kernel's decompressor is emulated and a gzip'd 1 MB initramfs costs ~50 s;
# the guest kernel config has no initramfs decompressors at all.
#
# Layout: /init, /bin/busybox, /bin/<applet> -> busybox, /sbin -> bin,
# /usr/bin -> ../bin, /usr/sbin -> ../bin, /dev/console (c 5 1), /proc, /sys,
# /tmp, /root, /mnt, /run, /etc/{passwd,group} (no busybox or links when
# SWIFTLET_INITRAMFS_BUSYBOX=0).
#
# Needs root: to install missing Debian packages and to create the device
# node (the archive is written by `cpio -o -H newc` from a real tree, so no
# fakeroot is involved).
set -euo pipefail

PROG=build-initramfs
# shellcheck source=../script-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../script-common.sh"
handle_help_argument "$@"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
init_c="$here/init.c"
self="$here/$(basename "${BASH_SOURCE[0]}")"
[[ -f $init_c ]] || die "init source not found: $init_c"

libc="${SWIFTLET_INIT_LIBC:-musl}"
case "$libc" in
    musl) cc=musl-gcc; libc_package=musl-tools ;;
    glibc) cc=gcc; libc_package=libc6-dev ;;
    *) die "SWIFTLET_INIT_LIBC must be musl or glibc (got '$libc')" ;;
esac
with_busybox="${SWIFTLET_INITRAMFS_BUSYBOX:-1}"
case "$with_busybox" in
    0|1) ;;
    *) die "SWIFTLET_INITRAMFS_BUSYBOX must be 0 or 1 (got '$with_busybox')" ;;
esac

# ---------------------------------------------------------------- packages
packages=(busybox-static cpio gcc "$libc_package")
install_missing_packages "${packages[@]}"

busybox=/bin/busybox
[[ -x $busybox ]] || die "$busybox not found although busybox-static is installed"
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)

# -------------------------------------------------------------- cache key
key=$(
    {
        printf 'busybox-static=%s\n' "$busybox_version"
        printf 'libc=%s\n' "$libc"
        printf 'busybox=%s\n' "$with_busybox"
        printf -- '--- init.c\n'; cat "$init_c"
        printf -- '--- build-initramfs.sh\n'; cat "$self"
    } | sha256sum | cut -c1-12
)

cache="${SWIFTLET_CACHE:-/var/cache/swiftlet}"
mkdir -p "$cache" || die "cannot create cache directory $cache"
cache=$(cd "$cache" && pwd)
out="$cache/initramfs-$key.cpio"
if [[ $with_busybox == 1 ]]; then
    current="$cache/initramfs.cpio"
else
    current="$cache/initramfs-minimal.cpio"
fi

finish() {
    ln -sfn "$(basename "$out")" "$current.tmp" && mv -T "$current.tmp" "$current" \
        || die "cannot update symlink $current"
    printf '%s\n' "$out"
    exit 0
}

if [[ -f $out ]]; then
    log "up to date: $out"
    finish
fi

mkdir -p "$cache/.locks"
exec 9>"$cache/.locks/initramfs-$key.lock"
if ! flock -n 9; then
    log "another build of $out is running; waiting for it"
    flock 9
fi
[[ -f $out ]] && finish

[[ $(id -u) == 0 ]] || die "must run as root (creates the /dev/console device node)"

work=$(mktemp -d "$cache/.initramfs-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ------------------------------------------------------------------- init
log "compiling $init_c (static, $libc)"
"$cc" -static -Os -s -Wall -Wextra -Werror \
    -ffunction-sections -fdata-sections -Wl,--gc-sections \
    -o "$work/init" "$init_c" >&2 || die "compiling $init_c failed"

# ------------------------------------------------------------------- tree
root="$work/root"
mkdir -p "$root"/{bin,dev,etc,mnt,proc,root,run,sys,tmp,usr}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
ln -s bin "$root/sbin"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"

install -m 0755 "$work/init" "$root/init"
napplets=0
if [[ $with_busybox == 1 ]]; then
    install -m 0755 "$busybox" "$root/bin/busybox"
    while IFS= read -r applet; do
        [[ -n $applet && $applet != busybox && $applet != */* ]] || continue
        [[ -e $root/bin/$applet || -L $root/bin/$applet ]] && continue
        ln -s busybox "$root/bin/$applet"
        napplets=$((napplets + 1))
    done < <("$root/bin/busybox" --list)
    [[ -L $root/bin/sh ]] || die "busybox provides no sh applet"
fi

mknod -m 0600 "$root/dev/console" c 5 1 || die "mknod /dev/console failed"

printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"

# Reproducible archive: fixed timestamps, root ownership, sorted names.
find "$root" -mindepth 1 -exec touch -h -d @0 {} +
(
    cd "$root"
    find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
        cpio --quiet -o -H newc --reproducible -R 0:0 > "$work/initramfs.cpio"
) || die "writing the cpio archive failed"

mv "$work/initramfs.cpio" "$out"
if [[ $with_busybox == 1 ]]; then
    contents="busybox $busybox_version with $napplets applet links"
else
    contents="no busybox"
fi
log "wrote $out ($(stat -c %s "$out") bytes: /init $(stat -c %s "$root/init") bytes, $contents)"
finish
