#!/usr/bin/env bash
# The machine packages the whole suite needs: a JDK for Spark, python3-venv, and for the
# multi-host tests sshd, iproute2, sudo and cloud-init (its schema validates our user data).
# As root it installs what is missing; otherwise it names what is missing (those tests then
# skip, and the test run ends with one line saying how many did not run and why).
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(default-jdk-headless)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "note: not root, so not installing: ${need[*]} (sudo apt-get install ${need[*]});" \
       "the tests that need them will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}"
