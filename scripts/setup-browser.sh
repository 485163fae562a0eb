#!/usr/bin/env bash
# Install headless Chromium and its WebDriver from Debian's packages, only when missing: the chat page's
# browser test (tests/e2e/test_chat_page.py) drives /usr/bin/chromium through /usr/bin/chromedriver.
# Needs root (or passwordless sudo) and apt-get; elsewhere it says what to install and leaves it to you.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="none"; fi
fi
if [ "$sudo" = none ] || ! command -v apt-get >/dev/null; then
  echo "warning: install chromium and chromium-driver (Debian packages) for the browser test" >&2
  exit 0
fi
echo "installing chromium and chromium-driver (apt-get) for the browser test"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
