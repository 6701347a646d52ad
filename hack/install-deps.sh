#!/usr/bin/env bash
# Installs the Debian packages the test ground runs: runc, the CNI plugins, the
# distribution registry, iptables and socat. Installs only what is missing; needs root
# when anything is.
set -euo pipefail

need=()
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge || -x /opt/cni/bin/bridge ]] || need+=(containernetworking-plugins)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
# The local cluster forwards loopback ports between nodes (network namespaces)
# and the host.
command -v socat >/dev/null || need+=(socat)

if [[ ${#need[@]} -eq 0 ]]; then
	echo "install-deps: runc, CNI plugins, docker-registry, iptables, iproute2, socat present"
	exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "install-deps: missing ${need[*]}; run as root (or install them) to build the test ground" >&2
	exit 1
fi
echo "install-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# docker-registry's package starts a service on install where an init system
# runs; the test ground starts its own registries, so keep it from starting.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${need[@]}"
