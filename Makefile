# One venv for everything; `make setup` is idempotent (re-runs only when the dependency files change).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: setup demo test bench eval-nlp eval-anatomy eval-grounding eval-vision eval-real clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 are pinned: pip takes them from local wheels where present
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/mimic-ils demo --output $(DEMO_OUT)

test: setup
	$(PY) -m pytest -n 2 --dist loadfile -q

bench: setup
	$(PY) bench/bench_structuring.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_vision_backends.py
	$(PY) bench/bench_sam_memory.py

eval-nlp: setup
	$(PY) bench/eval_nlp.py

eval-anatomy: setup
	$(PY) bench/eval_anatomy.py

eval-grounding: setup
	$(PY) bench/eval_grounding.py --studies 60 --seed 1

eval-vision: setup  # the vision stages alone, on the true findings of five corpora (pooled table last)
	$(PY) bench/eval_grounding.py --vision-only --studies 40 --seed 0 1 2 5 7

eval-real: setup  # lesions drawn into the real dev radiographs (../shared/data/cxr-lungs-dev), vision stages only
	$(PY) bench/eval_insertion.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
