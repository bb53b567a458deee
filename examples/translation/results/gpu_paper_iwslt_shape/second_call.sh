#!/bin/bash
# Second device call of 2026-12-04: GradInit alone on the GPU (the first call's GradInit runs shared
# it with eleven others and spent 241 s of their budget in GradInit's 780 iterations).
END=$(( $(date +%s) + ${1:-270} ))
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devdata/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LIMIT=$(( END - $(date +%s) - 55 ))
echo "train_time_limit_s $LIMIT"; date -u
python3 examples/translation/no_warmup.py --out $OUT/tr --jobs 2 --threads_per_run 4 \
  --variants fairseq/gradinit --adam_lrs 5e-4 1e-3 --seeds 0 --logging_steps 25 -- \
  --recipe paper --data_dir .devdata/multi30k/raw --validation_split val --test_split test_2016_flickr \
  --max_steps 100000 --per_device_eval_batch_size 250 --generation_max_length 80 --tf32 true \
  --save_strategy no --do_eval false --first_step_report true --save_init_scales true \
  --train_time_limit_s $LIMIT 2>&1 | tee $OUT/second.log
date -u; nvidia-smi --query-gpu=name --format=csv >> $OUT/second.log 2>&1
(cd $OUT && find tr -name '*.safetensors' -delete; tar -czf tr.tar.gz tr && rm -rf tr)
