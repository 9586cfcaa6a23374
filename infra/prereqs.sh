#!/usr/bin/env bash
# Makes sure the tools the tests need are here: Java 17+ and Maven (the Kafka broker), and
# Debian's chromium (the web UI's browser tests, driven by Playwright without a browser download).
# As root with apt-get (Debian/Ubuntu, CI) it installs what is missing, with sudo where that works
# without a password; otherwise it says what to install.
set -euo pipefail

java_major() {
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

apt_install() {  # apt_install WHY PACKAGE...: 0 when installed, 1 when this user cannot
  local why=$1; shift
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else return 1; fi
  fi
  command -v apt-get >/dev/null 2>&1 || return 1
  echo "installing $* (needed $why) ..."
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" >/dev/null
}

missing=()
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  missing+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if [ ${#missing[@]} -gt 0 ] && ! apt_install "to run the Kafka broker" "${missing[@]}"; then
  echo "runstream's tests and demo run a real Kafka broker, which needs Java 17+ and Maven." >&2
  echo "Install them, e.g.: sudo apt-get install ${missing[*]}   (macOS: brew install openjdk@17 maven)" >&2
  exit 1
fi

# The browser tests (pytest -m browser) skip, saying why, when chromium is not here.
if ! command -v chromium >/dev/null 2>&1 && ! apt_install "by the web UI's browser tests" chromium; then
  echo "note: the web UI's browser tests need Debian's chromium and will be skipped;" \
       "install it with: sudo apt-get install chromium" >&2
fi
exit 0
