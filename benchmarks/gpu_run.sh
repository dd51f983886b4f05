#!/usr/bin/env bash
# What the lead ran on the lent GPU machine (device tool), writing results under $OUT.
set -x
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a $OUT/gpu.txt
# 1. generator inference on CUDA (torch fp32 / fp16 / bf16), 256 px ngf 128, random init
python3 -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from conftest import make_generator
make_generator(Path('/tmp/g256'), resolution=256, ngf=128)
"
timeout 200 python3 -m projgan bench /tmp/g256 --device cuda --batch-sizes 1,8,32,64 --repeats 30 --out $OUT/generator256_cuda.json 2>&1 | tail -30
# 2. training seconds per kimg, 256 px, ngf 128, batch 64 (paper config), random-init backbone
timeout 240 python3 -m projgan.train.bench --device cuda --resolution 256 --ngf 128 --batch 64 \
  --precisions fp32,bf16 --channels-last on,off --compile off --steps 10 --warmup 3 --out $OUT/train256_cuda.json 2>&1 | tail -20
timeout 200 python3 -m projgan.train.bench --device cuda --resolution 256 --ngf 128 --batch 64 \
  --precisions bf16 --channels-last on --compile on --steps 10 --warmup 3 --out $OUT/train256_cuda_compile.json 2>&1 | tail -20
# 3. GPU-marked tests (those importable without the web stack)
timeout 60 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -5
ls -la $OUT
