#!/bin/sh
# Create a private SoftHSM token directory and initialise one token in it.
#
#   make-token.sh --dir DIR --label LABEL --so-pin-file F --pin-file F
#
# Writes DIR/softhsm2.conf (from softhsm2.conf.template) and DIR/tokens/,
# initialises a token with softhsm2-util, and prints the line to eval:
#   export SOFTHSM2_CONF=DIR/softhsm2.conf
# Running it again with the same DIR adds another token to that directory.
#
# softhsm2-util takes PINs only on its command line or from a terminal, so
# here they are briefly visible in the process list of this machine. The
# Python helper (tokens.softhsm) feeds them through a pty instead.
set -eu

usage() {
    echo "usage: $0 --dir DIR --label LABEL --so-pin-file FILE --pin-file FILE" >&2
    exit 2
}

dir="" label="" so_pin_file="" pin_file=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir="${2:?}"; shift 2 ;;
        --label) label="${2:?}"; shift 2 ;;
        --so-pin-file) so_pin_file="${2:?}"; shift 2 ;;
        --pin-file) pin_file="${2:?}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$dir" ] && [ -n "$label" ] && [ -n "$so_pin_file" ] && [ -n "$pin_file" ] || usage

here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/tokens"
# An absolute path: SoftHSM resolves tokendir against the caller's cwd otherwise.
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
if [ ! -f "$conf" ]; then
    # '|' as the sed delimiter because the path contains '/'.
    sed "s|@TOKENDIR@|$dir/tokens|" "$here/softhsm2.conf.template" > "$conf"
fi

# First line of each file, without the trailing newline.
so_pin=$(head -n 1 "$so_pin_file")
pin=$(head -n 1 "$pin_file")

SOFTHSM2_CONF="$conf" softhsm2-util --init-token --free \
    --label "$label" --so-pin "$so_pin" --pin "$pin" >&2

echo "export SOFTHSM2_CONF=$conf"
