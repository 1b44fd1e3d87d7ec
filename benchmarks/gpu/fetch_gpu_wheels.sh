#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu/gpu_wheels.txt for the GPU machine (x86-64, CPython 3.12) into .whl/
# (git-ignored), one by one without their dependencies: the list already names every missing one.
# On the GPU machine: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#   --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -v '^\s*#' benchmarks/gpu/gpu_wheels.txt | grep -v '^\s*$' | while read -r requirement; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$requirement"
done
ls .whl/*.whl | wc -l | xargs echo "wheels in .whl:"
du -sh .whl
