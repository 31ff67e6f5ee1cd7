#!/bin/sh
# Provide a QEMU of 8.1 or newer (Debian bookworm-backports' QEMU 10) for the
# binary statistics tests, without touching the system's apt configuration.
#
#   tests/helpers/qemu10.sh [DIR]
#
# prints the path of the qemu-system-x86_64 it provides.  DIR (default:
# $KVMSTAT_QEMU10_DIR, else /var/cache/kvmstat-tests/qemu10 for root and
# ~/.cache/kvmstat-tests/qemu10 for other users) caches the extracted packages
# between runs: when DIR already holds a complete extraction nothing is
# downloaded.  The packages come from the archive named by the system's own
# Debian sources file, through a private apt configuration (its own source
# list, package lists and download cache in a temporary directory), and are
# unpacked with `dpkg-deb -x`, never installed; their shared libraries are the
# ones Debian 12's own qemu-system-x86 already installed.  Run that QEMU with
# `-L DIR/usr/share/seabios -L DIR/usr/share/qemu`.
#
# Used by .ci/run (to prepare it) and by tests/helpers/qemu10.py (the tests).
set -eu

PACKAGES="qemu-system-x86 qemu-system-common qemu-system-data seabios"
SUITE=bookworm-backports
SOURCES=/etc/apt/sources.list.d/debian.sources
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

if [ $# -ge 1 ]; then
    dir=$1
elif [ -n "${KVMSTAT_QEMU10_DIR:-}" ]; then
    dir=$KVMSTAT_QEMU10_DIR
elif [ "$(id -u)" -eq 0 ]; then
    dir=/var/cache/kvmstat-tests/qemu10
else
    dir=${XDG_CACHE_HOME:-$HOME/.cache}/kvmstat-tests/qemu10
fi
qemu=$dir/usr/bin/qemu-system-x86_64
fail() { echo "qemu10.sh: $*" >&2; exit 1; }

if [ -f "$dir/.complete" ] && [ -x "$qemu" ]; then
    echo "$qemu"
    exit 0
fi

for tool in apt-get dpkg-deb flock; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (a Debian host is needed)"
done
[ -r "$SOURCES" ] || fail "$SOURCES is missing: cannot tell which Debian archive to use"
[ -r "$KEYRING" ] || fail "$KEYRING is missing (apt-get install debian-archive-keyring)"
uri=$(awk '/^URIs:/{print $2; exit}' "$SOURCES")
[ -n "$uri" ] || fail "no URIs: line in $SOURCES"

mkdir -p "$(dirname "$dir")"
# One preparation at a time (parallel test runs share the cache).
exec 9>"$dir.lock"
flock 9
if [ -f "$dir/.complete" ] && [ -x "$qemu" ]; then
    echo "$qemu"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kvmstat-qemu10.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" \
         "$work/root"
echo "deb [signed-by=$KEYRING] $uri $SUITE main" > "$work/sources.list"
apt() {
    apt-get -q -o Dir::Etc::SourceList="$work/sources.list" \
        -o Dir::Etc::SourceParts="$work/parts" -o Dir::State::Lists="$work/lists" \
        -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root "$@"
}
apt update >&2 || fail "apt-get update of $SUITE from $uri failed"
targets=
for p in $PACKAGES; do targets="$targets $p/$SUITE"; done
# shellcheck disable=SC2086  # one word per package
(cd "$work/debs" && apt download $targets) >&2 || fail "apt-get download of$targets failed"
for deb in "$work/debs"/*.deb; do
    dpkg-deb -x "$deb" "$work/root" || fail "dpkg-deb -x $deb failed"
done
"$work/root/usr/bin/qemu-system-x86_64" --version >&2 \
    || fail "the downloaded qemu-system-x86_64 does not run (are Debian 12's QEMU libraries installed?)"
rm -rf "$dir"
mv "$work/root" "$dir"
touch "$dir/.complete"
echo "$qemu"
