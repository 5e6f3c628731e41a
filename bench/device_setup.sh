#!/usr/bin/env bash
# Run first in every GPU-machine call (source it: it exports PYTHONPATH): installs the carried wheels (.whl, from
# bench/device_wheels.sh) under /tmp/site and qcat itself from this tree, without touching the image's packages.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .
export PYTHONPATH=/tmp/site
# compiled now, warnings silenced: torchao's sources raise SyntaxWarnings when first compiled, which pytest makes errors
python3 -W ignore -m compileall -q /tmp/site >/dev/null 2>&1 || true
