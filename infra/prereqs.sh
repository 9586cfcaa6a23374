#!/usr/bin/env bash
# Makes sure the tools the Kafka broker needs are here: Java 17+ and Maven.
# As root with apt-get (Debian/Ubuntu, CI) it installs what is missing; otherwise it says what to install.
set -euo pipefail

java_major() {
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

missing=()
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  missing+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null 2>&1 || missing+=(maven)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (needed to run the Kafka broker) ..."
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
else
  echo "runstream's tests and demo run a real Kafka broker, which needs Java 17+ and Maven." >&2
  echo "Install them, e.g.: sudo apt-get install ${missing[*]}   (macOS: brew install openjdk@17 maven)" >&2
  exit 1
fi
