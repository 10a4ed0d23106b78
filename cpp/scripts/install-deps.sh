#!/bin/sh
# The Debian packages the C++ build needs (libpng-dev, libjpeg-dev, cmake, a C++ compiler),
# installed with apt-get only when something is missing. Used by `make cpp` and the tests.
set -eu
missing=""
for pkg in libpng-dev libjpeg-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
command -v cmake >/dev/null 2>&1 || missing="$missing cmake"
command -v g++ >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1 || missing="$missing g++"
command -v make >/dev/null 2>&1 || missing="$missing make"
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "cadyq cpp: missing$missing and no apt-get here; install them with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "cadyq cpp: missing$missing; run as root or install them: apt-get install$missing" >&2
    exit 1
  fi
fi
echo "cadyq cpp: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends $missing >&2 || {
  $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends $missing >&2
}
