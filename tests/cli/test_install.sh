#!/usr/bin/env bash
# `make install PREFIX=...` installs the binary, both libraries, the header and
# adapterctl.pc; a program built with `pkg-config adapterctl` links and runs
# against the installed shared library.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$1"; then echo "ok: $2"; else echo "FAIL: $2"; fail=1; fi; }

# A plain (non-sanitizer) build, whatever the calling make was asked for.
env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS make -s -C "$root" --no-print-directory install \
    PREFIX="$tmp/prefix" SAN=0 >"$tmp/log" 2>&1 || { cat "$tmp/log"; echo "FAIL: make install"; exit 1; }

p="$tmp/prefix"
check '[ -x "$p/bin/adapterctl" ]' "binary installed"
check '[ -f "$p/lib/libadapterctl.a" ]' "static library installed"
check '[ -L "$p/lib/libadapterctl.so" ] && [ -f "$p/lib/libadapterctl.so.0" ]' "shared library and link installed"
check '[ -f "$p/include/adapterctl.h" ]' "header installed"
check '[ -f "$p/lib/pkgconfig/adapterctl.pc" ]' "pkg-config file installed"

want=$(sed -n 's/^#define ACTL_VERSION_STRING "\(.*\)"/\1/p' "$root/lib/adapterctl.h")
got=$(PKG_CONFIG_PATH="$p/lib/pkgconfig" pkg-config --modversion adapterctl)
check '[ "$got" = "$want" ]' "pkg-config version $got = $want"

cat >"$tmp/use.c" <<'EOC'
#include <adapterctl.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
    uint16_t h = 0x3c00; /* 1.0 in binary16 */
    float f = 0;
    actl_f16_to_f32(&h, &f, 1);
    printf("%s %g %s\n", actl_version(), f, actl_strerror(ACTL_ESHAPE));
    return f == 1.0f ? 0 : 1;
}
EOC
flags=$(PKG_CONFIG_PATH="$p/lib/pkgconfig" pkg-config --cflags --libs adapterctl)
check 'cc -std=c11 -Wall -Wextra -Wpedantic -o "$tmp/use" "$tmp/use.c" $flags' "program compiles against the installed header and library"
out=$(LD_LIBRARY_PATH="$p/lib" "$tmp/use")
check '[ "$out" = "$want 1 shape mismatch" ]' "program runs against the shared library: '$out'"
check 'LD_LIBRARY_PATH="$p/lib" ldd "$tmp/use" | grep -q "$p/lib/libadapterctl.so.0"' "linked to the installed libadapterctl.so.0"
check '"$p/bin/adapterctl" --version | grep -q "$want"' "installed binary runs"
exit $fail
