# Set-up and the two everyday commands. See README.md.
#   make demo   install everything, then run the default recipe (Fashion-MNIST, offline)
#   make test   install everything, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RECIPE ?= recipes/lenet300_fashion_mnist.yaml
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data demo test smoke clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST from Debian's package (needs apt and root or sudo); otherwise see README "Data".
data:
	@if [ -f $(FASHION_MNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "Fashion-MNIST not found and apt-get is unavailable: see README.md, section Data"; fi

demo: install data
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/lightning-lottery find --config $(RECIPE)

smoke: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/lightning-lottery find --config recipes/lenet300_digits_smoke.yaml

test: install data
	WANDB_MODE=offline $(PY) -m pytest -q

clean:
	rm -rf $(VENV) experiments wandb .pytest_cache
