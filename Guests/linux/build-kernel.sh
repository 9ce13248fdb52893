#!/usr/bin/env bash
# Build Swiftlet's guest Linux kernel (vmlinux + bzImage) from Debian's
# linux-source package, with Guests/linux/microvm.config on top of tinyconfig.
#
# Usage: Guests/linux/build-kernel.sh [-h|--help]
#
# Environment:
#   SWIFTLET_CACHE                   cache root, default /var/cache/swiftlet.
#                                    Must be outside the work tree (the source
#                                    tree and objects take ~1.5 GB while building).
#   SWIFTLET_KERNEL_EMULATION_PATCH  1: apply the patch set in emulated/ (in name
#                                    order), needed on software-KVM hosts that
#                                    emulate guest kernel mode (the development
#                                    host): no int3 self-test, system calls from
#                                    the fault SYSCALL raises there, no fwait on
#                                    task exit.  Each patch's header says why.
#                                    0 (default): plain kernel.
#   SWIFTLET_KERNEL_JOBS             parallel make jobs, default $(nproc).
#   SWIFTLET_KERNEL_KEEP_SOURCE      1: keep the extracted, built source tree in
#                                    the output directory after a successful build
#                                    (default: delete it; it is kept after a failure
#                                    so that a re-run continues incrementally).
#
# Output: $SWIFTLET_CACHE/linux-<debian version>-<key>/{vmlinux,bzImage,config,
# System.map,kernel.release,build.log}, where <key> is a short sha256 of the
# fragment, the patches (only if applied: names and contents), whether they were applied, the
# linux-source version and RECIPE_REVISION below.  If vmlinux and bzImage
# already exist for the key nothing is built.  $SWIFTLET_CACHE/kernel-current
# is a symlink to the directory of the last requested build.
#
# stdout: the vmlinux path, the bzImage path, and the output directory on the
# LAST line (for `$(shell ... | tail -n1)`).  Everything else goes to stderr.
#
# Needs root only to install missing Debian packages (apt-get).
set -euo pipefail

# Bump when a change to this script changes what gets built (forces a rebuild).
RECIPE_REVISION=1

PROG=build-kernel
# shellcheck source=../script-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../script-common.sh"
handle_help_argument "$@"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/microvm.config"
[[ -f $fragment ]] || die "config fragment not found: $fragment"
shopt -s nullglob
patches=("$here"/emulated/*.patch)
shopt -u nullglob
((${#patches[@]})) || die "no patches in $here/emulated"

emulation_patch="${SWIFTLET_KERNEL_EMULATION_PATCH:-0}"
case "$emulation_patch" in
    0|1) ;;
    *) die "SWIFTLET_KERNEL_EMULATION_PATCH must be 0 or 1 (got '$emulation_patch')" ;;
esac
jobs="${SWIFTLET_KERNEL_JOBS:-$(nproc)}"
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "SWIFTLET_KERNEL_JOBS must be a positive integer (got '$jobs')"
keep_source="${SWIFTLET_KERNEL_KEEP_SOURCE:-0}"

# ---------------------------------------------------------------- packages
packages=(linux-source build-essential flex bison bc libelf-dev libssl-dev
          cpio xz-utils lz4 patch)
install_missing_packages "${packages[@]}"

# ---------------------------------------------------------- linux-source
shopt -s nullglob
tarballs=(/usr/src/linux-source-*.tar.xz)
shopt -u nullglob
((${#tarballs[@]})) || die "no /usr/src/linux-source-*.tar.xz (is the linux-source package installed?)"
tarball=$(printf '%s\n' "${tarballs[@]}" | sort -V | tail -n1)
# The Debian package version (e.g. 6.1.192-2) identifies the source exactly.
if owner=$(dpkg-query -S "$tarball" 2>/dev/null | head -n1 | cut -d: -f1) && [[ -n $owner ]]; then
    src_version=$(dpkg-query -W -f='${Version}' "$owner")
else
    src_version=$(basename "$tarball" .tar.xz)
    src_version=${src_version#linux-source-}
fi
[[ -n $src_version ]] || die "cannot determine the linux-source version of $tarball"

# -------------------------------------------------------------- cache key
key=$(
    {
        printf 'recipe-revision=%s\n' "$RECIPE_REVISION"
        printf 'linux-source=%s\n' "$src_version"
        printf 'emulation-patch=%s\n' "$emulation_patch"
        printf -- '--- fragment\n'; cat "$fragment"
        if [[ $emulation_patch == 1 ]]; then
            for p in "${patches[@]}"; do
                printf -- '--- patch %s\n' "$(basename "$p")"; cat "$p"
            done
        fi
    } | sha256sum | cut -c1-12
)

cache="${SWIFTLET_CACHE:-/var/cache/swiftlet}"
mkdir -p "$cache" || die "cannot create cache directory $cache"
cache=$(cd "$cache" && pwd)
outdir="$cache/linux-$src_version-$key"
current="$cache/kernel-current"

finish() {
    ln -sfn "$outdir" "$current.tmp" && mv -T "$current.tmp" "$current" \
        || die "cannot update symlink $current"
    printf '%s\n' "$outdir/vmlinux" "$outdir/bzImage" "$outdir"
    exit 0
}

built() { [[ -f $outdir/vmlinux && -f $outdir/bzImage ]]; }

if built; then
    log "up to date: $outdir (linux-source $src_version, emulation patch=$emulation_patch)"
    finish
fi

# One build per key at a time (e.g. a developer and CI on the same machine).
mkdir -p "$cache/.locks"
exec 9>"$cache/.locks/linux-$src_version-$key.lock"
if ! flock -n 9; then
    log "another build of $outdir is running; waiting for it"
    flock 9
fi
if built; then
    log "built by a concurrent run: $outdir"
    finish
fi

log "building linux-source $src_version, emulation patch=$emulation_patch, key $key"
log "output directory: $outdir"
mkdir -p "$outdir"
start=$SECONDS

# ------------------------------------------------- extract (+ patch) source
src="$outdir/src"
if [[ ! -f $src/.swiftlet-prepared ]]; then
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    log "extracting $tarball (about a minute)"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1 \
        || die "extracting $tarball failed"
    if [[ $emulation_patch == 1 ]]; then
        for p in "${patches[@]}"; do
            log "applying $(basename "$p")"
            patch -d "$src.tmp" -p1 -N --no-backup-if-mismatch -s < "$p" >&2 \
                || die "$(basename "$p") does not apply to linux-source $src_version"
        done
    fi
    touch "$src.tmp/.swiftlet-prepared"
    mv "$src.tmp" "$src"
fi

# -------------------------------------------------------------- configure
kmake() {
    make -C "$src" ARCH=x86_64 KBUILD_BUILD_USER=swiftlet KBUILD_BUILD_HOST=swiftlet "$@"
}

log "configuring: tinyconfig + $(basename "$fragment")"
{
    kmake -s tinyconfig
    (cd "$src" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$fragment")
    kmake -s olddefconfig
} >&2 || die "kernel configuration failed"

# Every line of the fragment must have survived olddefconfig: a dependency we
# missed silently drops an option, so fail loudly and list them.
not_stuck=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            sym=${line%%=*}
            if ! grep -qxF -- "$line" "$src/.config"; then
                got=$(grep -E "^$sym=|^# $sym is not set" "$src/.config" || true)
                not_stuck+=("$line  (got: ${got:-not present, dependencies unmet})")
            fi
            ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }
            sym=${sym%% *}
            if got=$(grep -E "^$sym=" "$src/.config"); then
                not_stuck+=("$line  (got: $got)")
            fi
            ;;
    esac
done < "$fragment"
if ((${#not_stuck[@]})); then
    printf '%s: error: %d option(s) of %s did not stick after olddefconfig:\n' \
        "$PROG" "${#not_stuck[@]}" "$fragment" >&2
    printf '  %s\n' "${not_stuck[@]}" >&2
    exit 1
fi
log "all $(grep -cE '^CONFIG_|^# CONFIG_.* is not set$' "$fragment") fragment options verified in .config"

# ------------------------------------------------------------------ build
log "make -j$jobs vmlinux bzImage (log: $outdir/build.log)"
set +e
kmake -j"$jobs" vmlinux bzImage 2>&1 | tee "$outdir/build.log" >&2
rc=${PIPESTATUS[0]}
set -e
if ((rc != 0)); then
    die "kernel build failed (exit $rc); see $outdir/build.log (re-running continues the build)"
fi

release=$(kmake -s --no-print-directory kernelrelease)
for f in vmlinux:vmlinux arch/x86/boot/bzImage:bzImage .config:config System.map:System.map; do
    from=${f%%:*} to=${f##*:}
    [[ -f $src/$from ]] || die "build finished but $src/$from is missing"
    cp "$src/$from" "$outdir/$to.tmp"
done
printf '%s\n' "$release" > "$outdir/kernel.release"
# vmlinux and bzImage last: their presence marks the build as complete.
for f in config System.map vmlinux bzImage; do
    mv "$outdir/$f.tmp" "$outdir/$f"
done

if [[ $keep_source != 1 ]]; then
    log "removing the source tree (set SWIFTLET_KERNEL_KEEP_SOURCE=1 to keep it)"
    rm -rf "$src"
fi

elapsed=$((SECONDS - start))
log "built Linux $release in $((elapsed / 60))m$((elapsed % 60))s:" \
    "vmlinux $(stat -c %s "$outdir/vmlinux") bytes, bzImage $(stat -c %s "$outdir/bzImage") bytes"
finish
