#!/usr/bin/env bash
# The toolkit end to end on a small built-in Cityscapes-format dataset (a few minutes on a laptop CPU):
#   1. make the dataset: the real Cityscapes frame in ../shared/data/cityscapes_sample (when present) plus
#      synthetic frames in the official folder layout (leftImg8bit/, gtFine/ with labelIds/labelTrainIds);
#   2. convert train and val to TFRecords;
#   3. train the small PSPNet of configs/pspnet_demo_tiny.config;
#   4. evaluate the final checkpoint on val (mIoU, per-class IoU);
#   5. segment the val images (train-id, colour and overlay PNGs);
#   6. train the small ICNet of configs/icnet_demo_tiny.config, its backbone initialised from step 3's PSPNet
#      (fine_tune_checkpoint_type "segmentation": the two tiny backbones have the same names and shapes);
#   7. evaluate it on val;
#   8. compare the two (python -m bench compare: parameters, MACs, interleaved latency, memory, mIoU and
#      per-class IoU, beside the original toolkit's published figures).
# Everything goes to ./demo_output (delete it to start over; re-running resumes training).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
OUT=demo_output
SAMPLE=../shared/data/cityscapes_sample
SAMPLE_ARG=()
if [ -d "$SAMPLE" ]; then SAMPLE_ARG=(--sample_dir "$SAMPLE"); fi

echo "== 1/8 dataset -> $OUT/cityscapes"
if [ ! -d "$OUT/cityscapes/leftImg8bit" ]; then
  python dataset_tools/make_synthetic_cityscapes.py --output_dir "$OUT/cityscapes" --num_train 24 --num_val 4 \
    "${SAMPLE_ARG[@]}"
fi

echo "== 2/8 TFRecords -> $OUT/records"
for split in train val; do
  python dataset_tools/create_cityscapes_tfrecord.py --cityscapes_dir "$OUT/cityscapes" --split_type "$split" \
    --output_dir "$OUT/records"
done

echo "== 3/8 train -> $OUT/train"
python train.py --config_path configs/pspnet_demo_tiny.config --logdir "$OUT/train" --log_every_n_steps 10 \
  --image_summaries --test_image_summaries --save_summaries_secs 5

echo "== 4/8 eval -> $OUT/eval"
python eval.py --config_path configs/pspnet_demo_tiny.config --train_dir "$OUT/train" --eval_dir "$OUT/eval" \
  --verbose --max_evals 1 --eval_interval_secs 1

echo "== 5/8 inference -> $OUT/inference"
python inference.py --config_path configs/pspnet_demo_tiny.config --trained_checkpoint "$OUT/train" \
  --input_path "$OUT/cityscapes/leftImg8bit/val" --output_dir "$OUT/inference" --input_shape 128,256,3 --overlay

echo "== 6/8 train ICNet (backbone from $OUT/train) -> $OUT/train_icnet"
python train.py --config_path configs/icnet_demo_tiny.config --logdir "$OUT/train_icnet" --log_every_n_steps 10 \
  --save_summaries_secs 5 --config_override "train_config { fine_tune_checkpoint: \"$OUT/train\"
  fine_tune_checkpoint_type: \"segmentation\" }"

echo "== 7/8 eval ICNet -> $OUT/eval_icnet"
python eval.py --config_path configs/icnet_demo_tiny.config --train_dir "$OUT/train_icnet" \
  --eval_dir "$OUT/eval_icnet" --max_evals 1 --eval_interval_secs 1

echo "== 8/8 PSPNet against ICNet -> $OUT/compare"
python -m bench compare --quick --config_path configs/pspnet_demo_tiny.config \
  --config_path configs/icnet_demo_tiny.config --checkpoint "$OUT/train" --checkpoint "$OUT/train_icnet" \
  --eval_dir "$OUT/eval" --eval_dir "$OUT/eval_icnet" --input_shape 128,256 --out "$OUT/compare"

if [ -d "$SAMPLE" ]; then
  echo "The real frame's segmentation ($OUT/inference/frankfurt/) is poor, as expected: it is a val frame, so the"
  echo "demo trained on synthetic frames only (and for 200 steps)."
fi
# The seed's `--logdir train:A,eval:B` shows nothing on TensorBoard >= 2 (the name:path form is --logdir_spec's).
echo "Done. TensorBoard: tensorboard --logdir_spec train:$OUT/train,eval:$OUT/eval,train_icnet:$OUT/train_icnet,eval_icnet:$OUT/eval_icnet   (or: tensorboard --logdir $OUT)"
