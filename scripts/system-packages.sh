#!/usr/bin/env bash
# The machine packages the whole suite needs: a JDK for Spark, python3-venv, for the multi-host
# tests sshd, iproute2, sudo and cloud-init (its schema validates our user data), and for the EC2
# rehearsal mmdebstrap, the trixie archive keys and apt-cacher-ng; for the notebook's browser test
# Debian's headless Chromium and its WebDriver.
# As root it installs what is missing; otherwise it names what is missing (those tests then
# skip, and the test run ends with one line saying how many did not run and why).
set -euo pipefail
need=()
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v cloud-init >/dev/null 2>&1 || need+=(cloud-init)
# the EC2 rehearsal (tests/rehearsal_cluster.py): Debian image builder, trixie archive keys, apt proxy
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
[ -e /usr/share/keyrings/debian-archive-trixie-stable.gpg ] || need+=(debian-archive-keyring)
[ -x /usr/sbin/apt-cacher-ng ] || need+=(apt-cacher-ng)
# `fab notebook` in a real browser (tests/e2e/test_notebook.py): selenium drives it through chromedriver
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "note: not root, so not installing: ${need[*]} (sudo apt-get install ${need[*]});" \
       "the tests that need them will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}"
