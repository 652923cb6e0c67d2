#!/usr/bin/env bash
# Prints the path of an apparmor_parser that knows AppArmor 4.0's `userns,` rule (Debian 13's,
# run with Debian 13's C library: Debian 12 ships 3.0.8 and no backport). Downloaded once
# with a private apt state into the cache given as $1, so the host's sources stay untouched.
set -euo pipefail
cache=$1
wrapper=$cache/apparmor_parser
if [ -x "$wrapper" ]; then echo "$wrapper"; exit 0; fi
mkdir -p "$cache"/{lists/partial,archives/partial,x}
cd "$cache"
echo 'deb http://deb.debian.org/debian trixie main' >sources.list
apt=(apt-get -q -o Dir::Etc::SourceList="$cache/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::State::Lists="$cache/lists" -o Dir::Cache="$cache" -o Dir::Cache::archives="$cache/archives"
  -o Dir::State::status=/dev/null)
"${apt[@]}" update >&2
"${apt[@]}" download apparmor libc6 >&2
for d in apparmor_*.deb libc6_*.deb; do dpkg-deb -x "$d" x; done
cat >"$wrapper" <<EOS
#!/bin/sh
exec "$cache/x/usr/lib64/ld-linux-x86-64.so.2" --library-path "$cache/x/usr/lib/x86_64-linux-gnu" \\
  "$cache/x/usr/sbin/apparmor_parser" --base "$cache/x/etc/apparmor.d" "\$@"
EOS
chmod +x "$wrapper"
echo "$wrapper"
