# Shared by Guests/linux/build-kernel.sh and Guests/initramfs/build-initramfs.sh.
# The sourcing script sets PROG (its name in messages) before sourcing this file; its own
# header comment, up to its `set -euo pipefail` line, is its usage text.

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# Prints the header comment of the script being run ($0).
usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

# The scripts take no arguments but -h/--help.
handle_help_argument() {
    case "${1:-}" in
        -h|--help) usage; exit 0 ;;
        "") ;;
        *) usage >&2; die "unexpected argument: $1" ;;
    esac
}

# Installs those of the given Debian packages that are missing (apt-get update only then).
install_missing_packages() {
    local p missing=()
    for p in "$@"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get to install them"
    [[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}); run as root or install them with apt-get"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install failed for: ${missing[*]}"
}
