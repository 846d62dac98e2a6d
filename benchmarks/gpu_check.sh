#!/usr/bin/env bash
# The GPU data-path check: on a CUDA machine, in under 8 minutes, benchmarks/throughput.py for
#   ResNet-18 and ResNet-50 at 224 px, batch 256, bf16, channels_last (ResNet-50 also compiled) and the
#   classic U-Net at 256 px, batch 32, bf16;
# each printing (a) the raw PyTorch loop, (b) the train stage's step, (c) the data path (online imgaug,
# and the decoded cache with augmentation on the device, with the host milliseconds per sample of each),
# (d) the train stage end to end, the ratios b/a and d/min(a,c), and host syncs per step. Tracking is
# off and DVC is not needed. The table of all runs is printed at the end and written to $OUT (or
# ./gpu_check/) as JSON.
#
# A machine without network: install what its Python lacks from a folder of wheels made beforehand on
# a machine with access to PyPI, for that machine's Python (3.12 here):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
#       -d wheels imaug imagecorruptions-imaug scikit-image shapely imageio lazy-loader tifffile networkx \
#       jsonschema jsonschema-specifications referencing rpds-py attrs
# and carry ./wheels along (WHEELS=path to point elsewhere). Modules already importable are left alone.
#
#   bash benchmarks/gpu_check.sh               # on the GPU machine
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # a dry run on a CPU: tiny sizes, same code paths
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"

# --- what this Python lacks, from the wheels folder (no index: the machine may have no network) ----
missing=$("$PY" - <<'EOF'
import importlib.util
needed = {"imgaug": "imaug", "skimage": "scikit-image", "shapely": "shapely", "imageio": "imageio",
          "imagecorruptions": "imagecorruptions-imaug", "jsonschema": "jsonschema", "referencing": "referencing",
          "yaml": "pyyaml", "tqdm": "tqdm", "safetensors": "safetensors", "scipy": "scipy",
          "matplotlib": "matplotlib", "PIL": "pillow", "cv2": "opencv-python-headless"}
print(" ".join(pkg for module, pkg in needed.items() if importlib.util.find_spec(module) is None))
EOF
)
if [ -n "$missing" ]; then
    if [ ! -d "$WHEELS" ]; then
        echo "gpu_check: this Python lacks $missing and there is no wheels folder at $WHEELS (see the header)" >&2
        exit 2
    fi
    echo "gpu_check: installing from $WHEELS: $missing"
    # imaug pins both OpenCV packages; the machine's own OpenCV serves, so no dependency resolution here.
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps $missing \
        jsonschema-specifications rpds-py attrs lazy-loader tifffile networkx 2>&1 | grep -v "^Requirement already" || true
fi
"$PY" -c "import pipeline.training.loop, imgaug, jsonschema" || { echo "gpu_check: the project does not import" >&2; exit 2; }

export MLFLOW_TRACKING_URI=  # the benchmark workspace has tracking off; nothing contacts a store

if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
    DEVICE=cpu
    RUNS=(
        "resnet18|--model resnet18 --image-size 32 --batch 8 --precision bf16 --steps 3 --warmup 1 --rounds 1 --workers 2"
        "unet|--model unet --image-size 32 --batch 4 --precision bf16 --steps 3 --warmup 1 --rounds 1 --workers 2 --unet-base-channels 4 --unet-depth 2"
    )
else
    DEVICE=cuda
    RUNS=(
        "resnet18|--model resnet18 --image-size 224 --batch 256 --precision bf16 --channels-last --steps 40 --rounds 3"
        "resnet50|--model resnet50 --image-size 224 --batch 256 --precision bf16 --channels-last --steps 30 --rounds 2"
        "resnet50-compiled|--model resnet50 --image-size 224 --batch 256 --precision bf16 --channels-last --compile --steps 30 --rounds 2"
        "unet256|--model unet --image-size 256 --batch 32 --precision bf16 --channels-last --steps 40 --rounds 3"
    )
fi

status=0
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-450}))  # the whole check stays under 8 minutes
for run in "${RUNS[@]}"; do
    name=${run%%|*}
    args=${run#*|}
    left=$((deadline - SECONDS))
    limit=$(( left < 150 ? left : 150 ))
    if [ "$limit" -le 10 ]; then
        echo "gpu_check: no time left for $name" >&2
        status=1
        continue
    fi
    echo "=== $name ($limit s at most): $args"
    # shellcheck disable=SC2086
    if ! timeout "$limit" "$PY" benchmarks/throughput.py $args --device "$DEVICE" --json "$OUT/$name.json"; then
        echo "gpu_check: $name failed or ran past $limit s" >&2
        status=1
    fi
done

ls "$OUT"/*.json >/dev/null 2>&1 && "$PY" benchmarks/throughput.py --table "$OUT"/*.json || status=1
exit $status
