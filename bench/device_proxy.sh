#!/usr/bin/env bash
# On the GPU machine, after bench/device_setup.sh: the accuracy proxy (see the shared models README) as a plain
# safetensors folder, /tmp/proxy-dir, loaded as a hub model would be. Its GGUF travels in 62 MB pieces
# (`split -b 62000000 -d -a 2 proxy.gguf .proxy/part`), one device call per piece, each copied with
#   mkdir -p /tmp/parts && cp .proxy/part* /tmp/parts/
# while the machine stays warm; this joins them, checks the md5 and converts once (about a minute).
set -euo pipefail
[ -f /tmp/proxy-dir/config.json ] && exit 0
mkdir -p /tmp/proxy && cat /tmp/parts/part* > /tmp/proxy/proxy.gguf
echo "fa36a8a7b86e1a0355ecc8545f26e885  /tmp/proxy/proxy.gguf" | md5sum -c -
python3 - <<'PY'
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("/tmp/proxy", gguf_file="proxy.gguf", dtype="bfloat16")
if getattr(model, "hf_quantizer", None) is not None:
    model.hf_quantizer.remove_quantization_config(model)
model.save_pretrained("/tmp/proxy-dir")
AutoTokenizer.from_pretrained("/tmp/proxy", gguf_file="proxy.gguf").save_pretrained("/tmp/proxy-dir")
PY
