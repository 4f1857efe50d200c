#!/usr/bin/env bash
# What the browser and client tests need on a fresh Debian machine, installed only where missing.
# Debian's chromium and chromium-driver (a test tool's own browser download cannot work offline), and
# pinned selenium and huggingface_hub into the active Python environment. Safe to run again.
set -euo pipefail

SELENIUM_VERSION=4.51.0
HF_HUB_VERSION=2.4.0
PYTHON=${PYTHON:-python}

if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [[ -z ${VIRTUAL_ENV:-} ]]; then
  echo "ui-deps: no virtualenv is active; installing into $("$PYTHON" -c 'import sys; print(sys.prefix)')" >&2
fi
"$PYTHON" -m pip install -q "selenium==${SELENIUM_VERSION}" "huggingface_hub==${HF_HUB_VERSION}"

/usr/bin/chromium --version
/usr/bin/chromedriver --version
"$PYTHON" -c 'import selenium, huggingface_hub; print("selenium", selenium.__version__, "huggingface_hub", huggingface_hub.__version__)'
