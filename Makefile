# Everything a fresh machine needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdexp-installed
# torch is pinned to the build that lies on this machine's disk (a newer one downloads several GB).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean install tiny-shapes

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH) 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e ".[dev,postgres]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import sdexp, torch, diffusers, peft, hydra, wandb, cleanfid, open_clip, optuna, prodigyopt, psycopg, submitit, tensorboard, torchmetrics, plotly, optuna_dashboard, playwright" && touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sdexp.demo demo-out

# Test files run on JOBS processes (pytest-xdist), one torch thread each: on 2 cores about twice as fast.
JOBS ?= 2
test: $(STAMP)
	tools/install_test_services.sh
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check sdexp tests run.py bench analysis

# The recipe behind the built-in tiny_shapes model (docs/tiny_shapes.md): make tiny-shapes OUT=dir BUDGET=gpu|cpu
OUT ?= tiny-shapes-out
BUDGET ?= cpu
tiny-shapes: $(STAMP)
	PYTHON=$(BIN)/python tools/tiny_shapes_recipe.sh $(OUT) $(BUDGET)

bench: $(STAMP)
	$(BIN)/python bench/step.py

clean:
	rm -rf demo-out runs outputs multirun sweeps-out
