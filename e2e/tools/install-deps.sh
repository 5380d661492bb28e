#!/usr/bin/env bash
# Installs the system packages the tests need that Go cannot build: PostgreSQL (initdb +
# postgres) for the e2e suite, e2fsprogs (mkfs.ext4, e2fsck) for the store's failing-disk
# campaign. A no-op when everything is present.
# Debian/Ubuntu only (apt-get); run as root or with sudo available.
set -euo pipefail

have_postgres() {
	local d
	if command -v initdb >/dev/null 2>&1; then return 0; fi
	[ -x /usr/local/bin/initdb ] && return 0
	for d in /usr/lib/postgresql/*/bin; do
		[ -x "$d/initdb" ] && [ -x "$d/postgres" ] && return 0
	done
	return 1
}

missing=()
have_postgres || missing+=(postgresql)
{ command -v mkfs.ext4 && command -v e2fsck; } >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || missing+=(e2fsprogs)

if [ ${#missing[@]} -eq 0 ]; then
	echo "deps: all present (postgresql, e2fsprogs)"
	exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
		echo "deps: need root to apt-get install ${missing[*]}" >&2
		exit 1
	fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "deps: no apt-get; install ${missing[*]} with your package manager" >&2
	exit 1
fi
echo "deps: installing ${missing[*]} from Debian packages…"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# The Debian package creates and starts a "main" cluster through its
# maintainer scripts; the e2e suite never uses it (it runs its own initdb).
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
have_postgres || { echo "deps: postgresql installed but initdb still not found" >&2; exit 1; }
echo "deps: done"
