#!/usr/bin/env bash
# The NVIDIA GPU run of issue 10, in one script. Two halves:
#
#   scripts/gpu-run.sh prepare    here (with node_modules): .gpu-bundle/ with node, the Vulkan loader,
#                                 Dawn (../shared/gpu/prepare.sh), this bench bundled into one file, and
#                                 the PyTorch anchor (../shared/gpu/anchor + the official sam2 package,
#                                 which you put in .gpu-anchor/sam2 first; it is never committed)
#   scripts/gpu-run.sh device     on the GPU machine (the device `run` tool, the same call): medtune's
#                                 sam2.1-tiny training step on WebGPU at 1024 and 512, batch 16, then the
#                                 PyTorch reference (gpu_step.py) in the same run; everything lands in $OUT
#
# The device command: bash scripts/gpu-run.sh device   (carry: [".gpu-bundle", ".gpu-anchor"], timeout 600)
set -euo pipefail
cd "$(dirname "$0")/.."
B=.gpu-bundle
case "${1:-}" in
  prepare)
    bash ../shared/gpu/prepare.sh
    # tfjs-core once (module entry points; see ../shared/gpu/README.md), Dawn loaded from the bundle
    npx esbuild scripts/gpu-bench.ts --bundle --platform=node --format=cjs --main-fields=module,main \
      --external:webgpu --outfile=$B/gpu-bench.cjs --log-level=error \
      --banner:js="const __importMetaUrl = require('url').pathToFileURL(__filename).href;" --define:import.meta.url=__importMetaUrl
    mkdir -p $B/node_modules/webgpu
    echo '{"name":"webgpu","main":"index.cjs"}' > $B/node_modules/webgpu/package.json
    echo 'const dawn = require(require("path").join(__dirname, "..", "..", "dawn.node")); exports.create = dawn.create; exports.globals = dawn.globals;' \
      > $B/node_modules/webgpu/index.cjs
    mkdir -p .gpu-anchor
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx "/.gpu-anchor/" "$exclude" 2>/dev/null || echo "/.gpu-anchor/" >> "$exclude"
    cp -r ../shared/gpu/anchor/. .gpu-anchor/
    [ -d .gpu-anchor/sam2 ] || echo "gpu-run: put the official sam2 package in .gpu-anchor/sam2 for the PyTorch anchor (see ../shared/gpu/anchor/README.md)" >&2
    du -sh $B .gpu-anchor
    ;;
  device)
    OUT=${OUT:-/tmp/gpu-run}
    mkdir -p "$OUT"
    source $B/enter.sh
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt" || true
    for size in 1024 512; do
      timeout 240 node $B/gpu-bench.cjs --size $size --batch 16 --iters 3 --warmup 1 2>&1 | tee "$OUT/medtune-webgpu-$size.txt" || true
    done
    if [ -d .gpu-anchor/sam2 ]; then
      (cd .gpu-anchor && timeout 240 python3 gpu_step.py "$OUT/torch.json") 2>&1 | tee "$OUT/torch.txt" || true
    fi
    ;;
  *)
    echo "usage: scripts/gpu-run.sh prepare|device" >&2
    exit 2
    ;;
esac
