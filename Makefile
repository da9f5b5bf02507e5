# Retrain the shipped demo model from the ru-synth corpus:  make demo   (about 20 hours on 2 CPU cores)
# Stages: render the corpus (once, resumable) -> train 15 epochs -> continue 12 epochs with augmentation -> continue
# on train + the `more` split with noise, silence and joined clips (3 epochs, then 4 + 4 more at lower peak lrs, then
# 1.25 + 2.6 more with babble and white noise drawn more often) -> 2 epochs adding 25,000 new sentences (extra) ->
# 1.16 epochs adding 25,000 more (extra2) -> 0.88 epochs adding 25,000 more (extra3) -> ONNX (int8).
# Interrupted? Run `make demo` again: each stage continues its run from last.pt (a finished one just says "done").
# models/README.md has the measured figures of the run that made models/demo.onnx.

PYTHON ?= python3
DATA := data/ru-synth
RUN := runs/demo
TRAIN := $(PYTHON) train.py --valid_manifest $(DATA)/valid/manifest.jsonl --cache_dir data/cache --num_workers 1 \
	--batch_size 16 --train_manifest $(DATA)/train/manifest.jsonl
# $(call train_into,DIR): the output folder, resuming the run already there
train_into = --out_dir $(1) $(if $(wildcard $(1)/last.pt),--resume $(1)/last.pt)

.PHONY: demo demo-stage1 demo-stage2 demo-stage3 demo-stage4 demo-stage5 demo-stage6 demo-stage6b demo-stage7 demo-stage8 demo-stage9 demo-eval demo-eval-sets demo-medium demo-grown golos-eval test

demo: demo-stage9
	$(PYTHON) export.py --checkpoint $(RUN)/stage9/last.pt --quantize int8 -o models/demo.onnx

$(DATA)/train/manifest.jsonl:
	$(PYTHON) tools/render_corpus.py --out $(DATA)

# stage 1: from scratch, no augmentation, batch 16 (CTC's all-blank start lasts ~800 steps; see docs/runs/)
demo-stage1: $(DATA)/train/manifest.jsonl
	$(TRAIN) --model small --normalize per_feature --max_epochs 15 --lr 2e-3 --warmup_steps 200 \
		--no_spec_augment $(call train_into,$(RUN)/stage1)

# stage 2: a warm restart from the best stage-1 weights; stage 1 ends memorizing the 5000 training sentences, so
# this one adds speed perturbation, SpecAugment and more weight decay
demo-stage2: demo-stage1
	$(TRAIN) --init $(RUN)/stage1/best.pt --max_epochs 12 --lr 1e-3 --warmup_steps 100 --weight_decay 1e-2 \
		--speed_perturb 0.9 1.0 1.1 --rect_masks 2 --rect_freq 25 --rect_time 40 $(call train_into,$(RUN)/stage2)

# the README's evaluation: greedy WER and CER of the shipped model on ru-synth valid
demo-eval: $(DATA)/train/manifest.jsonl
	$(PYTHON) transcribe.py --manifest $(DATA)/valid/manifest.jsonl --report runs/demo-valid-errors.tsv --batch_size 8 \
		--lm none

# stage 3: from stage 2, on train + the `more` split (30,000 clips, 27.6 h: more sentences and voices), with
# additive noise at 0-30 dB SNR, random gain, leading/trailing silence and 2-3 clips joined with pauses, so that
# noise and silence come out blank (docs/runs/README.md, demo v2)
$(DATA)/more/manifest.jsonl: $(DATA)/train/manifest.jsonl
	$(PYTHON) tools/render_corpus.py --out $(DATA) --splits more
# everything but the share of noisy clips, which stages 6b and 7 raise (NOISIER)
AUGMENT_BASE := --speed_perturb 0.9 1.0 1.1 --rect_masks 2 --rect_freq 25 --rect_time 40 --snr_db 0 30 \
	--gain_prob 0.3 --silence_prob 0.3 --join_prob 0.3
AUGMENT := $(AUGMENT_BASE) --noise_prob 0.5
demo-stage3: demo-stage2 $(DATA)/more/manifest.jsonl
	$(TRAIN) $(DATA)/more/manifest.jsonl --init $(RUN)/stage2/best.pt --max_epochs 3 --lr 1e-3 --warmup_steps 100 \
		--weight_decay 1e-2 $(AUGMENT) --save_every 200 $(call train_into,$(RUN)/stage3)

# stage 4: stage 3's loss was still falling at the end of its schedule, so it goes on for 4 epochs at half the peak
# lr, with other augmentation draws (--seed 1) (docs/runs/README.md, demo-stage4)
demo-stage4: demo-stage3
	$(TRAIN) $(DATA)/more/manifest.jsonl --init $(RUN)/stage3/best.pt --max_epochs 4 --lr 5e-4 --warmup_steps 100 \
		--weight_decay 1e-2 $(AUGMENT) --seed 1 --save_every 200 $(call train_into,$(RUN)/stage4)

# stage 5: stage 4 still gained in its last epoch, so 4 more at a peak lr of 3e-4, other draws (--seed 2)
demo-stage5: demo-stage4
	$(TRAIN) $(DATA)/more/manifest.jsonl --init $(RUN)/stage4/best.pt --max_epochs 4 --lr 3e-4 --warmup_steps 100 \
		--weight_decay 1e-2 $(AUGMENT) --seed 2 --save_every 200 $(call train_into,$(RUN)/stage5)

# stage 6: the same recipe at a peak lr of 2e-4 (--seed 4), stopped at step 1620 of its 4 epochs when the noisy set
# showed babble and white noise costing most; stage 6b goes on from there drawing those kinds more often
# (--noise_kinds, 60% of clips noisy): 3400 steps, valid CER 6.86% (fp32) (docs/runs/README.md, demo-stage6b)
demo-stage6: demo-stage5
	$(TRAIN) $(DATA)/more/manifest.jsonl --init $(RUN)/stage5/best.pt --max_epochs 4 --lr 2e-4 --warmup_steps 100 \
		--weight_decay 1e-2 $(AUGMENT) --seed 4 --save_every 200 --stop_at_step 1620 $(call train_into,$(RUN)/stage6)
NOISIER := --noise_prob 0.6 --noise_kinds white white pink pink babble babble babble brown hum
demo-stage6b: demo-stage6
	$(TRAIN) $(DATA)/more/manifest.jsonl --init $(RUN)/stage6/last.pt --max_steps 3400 --lr 2e-4 --warmup_steps 100 \
		--weight_decay 1e-2 $(AUGMENT_BASE) $(NOISIER) --seed 5 --save_every 200 $(call train_into,$(RUN)/stage6b)

# stage 7 (demo model v2.2): more sentences. 25,000 further clips of lm.txt sentences that no clip reads yet, with
# the `more` split's voices (tools/render_extra.py; ~25 min on 2 cores), then stage 7 from stage 6b on train + more +
# extra (55,000 clips), 2 epochs of 2371 steps: valid CER 6.47% (fp32) (docs/runs/README.md, demo-stage7)
$(DATA)/extra/manifest.jsonl: $(DATA)/train/manifest.jsonl
	$(PYTHON) tools/render_extra.py --out $(DATA) --clips 25000
demo-stage7: demo-stage6b $(DATA)/extra/manifest.jsonl
	$(TRAIN) $(DATA)/more/manifest.jsonl $(DATA)/extra/manifest.jsonl --init $(RUN)/stage6b/last.pt --max_epochs 2 \
		--lr 3e-4 --warmup_steps 100 --weight_decay 1e-2 $(AUGMENT_BASE) $(NOISIER) --seed 6 --save_every 200 \
		$(call train_into,$(RUN)/stage7)

# stage 8 (demo model v2.3, now a step on the way): 25,000 more sentences that neither the corpus nor `extra` reads
# (extra2, ~30 min to render), then from stage 7 on all four training splits (80,000 clips, 3458 steps an epoch) for
# 4000 steps: valid CER 6.13% (docs/runs/README.md, demo-stage8)
$(DATA)/extra2/manifest.jsonl: $(DATA)/extra/manifest.jsonl
	$(PYTHON) tools/render_extra.py --out $(DATA) --clips 25000 --split extra2 --seed 1 \
		--exclude $(DATA)/extra/plan.jsonl
demo-stage8: demo-stage7 $(DATA)/extra2/manifest.jsonl
	$(TRAIN) $(DATA)/more/manifest.jsonl $(DATA)/extra/manifest.jsonl $(DATA)/extra2/manifest.jsonl \
		--init $(RUN)/stage7/last.pt --max_epochs 2 --max_steps 4000 --lr 3e-4 --warmup_steps 100 --weight_decay 1e-2 \
		$(AUGMENT_BASE) $(NOISIER) --seed 7 --save_every 200 $(call train_into,$(RUN)/stage8)

# stage 9 (demo model v2.4): a third such split (extra3, 23.0 h, ~30 min to render), then from stage 8 on all five
# training splits (105,000 clips, 4535 steps an epoch) for 4000 steps: valid CER 5.86% (docs/runs/README.md,
# demo-stage9)
$(DATA)/extra3/manifest.jsonl: $(DATA)/extra2/manifest.jsonl
	$(PYTHON) tools/render_extra.py --out $(DATA) --clips 25000 --split extra3 --seed 2 \
		--exclude $(DATA)/extra/plan.jsonl $(DATA)/extra2/plan.jsonl
demo-stage9: demo-stage8 $(DATA)/extra3/manifest.jsonl
	$(TRAIN) $(DATA)/more/manifest.jsonl $(DATA)/extra/manifest.jsonl $(DATA)/extra2/manifest.jsonl \
		$(DATA)/extra3/manifest.jsonl --init $(RUN)/stage8/last.pt --max_epochs 2 --max_steps 4000 --lr 3e-4 \
		--warmup_steps 100 --weight_decay 1e-2 $(AUGMENT_BASE) $(NOISIER) --seed 8 --save_every 200 \
		$(call train_into,$(RUN)/stage9)

# clean, noisy and long-file CER and whole-path RTF of models side by side: make demo-eval-sets MODELS="a.onnx b.onnx"
MODELS ?= models/demo.onnx
$(DATA)/eval/long/manifest.jsonl: $(DATA)/train/manifest.jsonl
	$(PYTHON) tools/make_eval_sets.py --out $(DATA)/eval
demo-eval-sets: $(DATA)/eval/long/manifest.jsonl
	$(PYTHON) bench/eval_sets.py $(foreach m,$(MODELS),--model $(m))

# An experiment, not the shipped model: the `medium` preset (3.8 M) from scratch on the same data and augmentation;
# ~1.4 h an epoch on 2 cores, 8 epochs. Run it again to continue from last.pt (docs/runs/README.md).
demo-medium: $(DATA)/more/manifest.jsonl
	$(TRAIN) $(DATA)/more/manifest.jsonl --model medium --normalize per_feature --max_epochs 8 --lr 2e-3 \
		--warmup_steps 300 $(AUGMENT) --save_every 200 $(call train_into,runs/demo2-medium)

# An experiment, not the shipped model: stage 5's weights grown into `medium` (the same function, 3.2x the
# parameters; tools/grow_checkpoint.py), then one epoch of stage 5's recipe: 74 min, valid CER 7.25% (docs/runs/)
$(RUN)/medium-grown.pt: | demo-stage5
	$(PYTHON) tools/grow_checkpoint.py $(RUN)/stage5/best.pt --model medium -o $@ --calibrate $(DATA)/train/manifest.jsonl
demo-grown: $(RUN)/medium-grown.pt
	$(TRAIN) $(DATA)/more/manifest.jsonl --init $< --max_epochs 1 --lr 3e-4 --warmup_steps 100 --weight_decay 1e-2 \
		$(AUGMENT) --seed 3 --save_every 200 $(call train_into,$(RUN)/grown)

# Golos's WER table with Sber's checkpoint: download (68 MB) and transfer it, export, fetch the test set (1.3 GB),
# transcribe crowd and farfield. GOLOS_LM=path/to/lm.binary adds the beam-search row (e.g. from Golos's KenLMs.tar:
# any KenLM binary or ARPA; the vocabulary, lm.words, is made from it on first use).
GOLOS := models/quartznet15x5_golos
golos-eval:
	$(PYTHON) transfer.py golos -o $(GOLOS).pt
	$(PYTHON) export.py --checkpoint $(GOLOS).pt -o $(GOLOS).onnx
	$(PYTHON) -m proslushka.golos eval --model $(GOLOS).onnx $(if $(GOLOS_LM),--lm $(GOLOS_LM))

test:
	$(PYTHON) -m pytest -q
