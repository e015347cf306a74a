# Pollinate's set-up and checks. `make demo` and `make test` are the two commands a new
# user needs; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint proto templates bench bench-flower-venv bench-serde bench-fedprox bench-byzantine bench-deployment clean

# One stamp per set of extras: demo needs only Pollinate, test adds the test tools,
# lint and proto add the developer tools. A stamp is redone when pyproject.toml changes.
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-%: $(PY) pyproject.toml
	$(PIP) install --quiet -e ".[$*]"
	touch $@

$(VENV)/.installed-base: $(PY) pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

# The tests exercise the PyTorch helpers: pin the CPU build here (a bare `torch`
# requirement would pull a multi-GB CUDA build); users choose their own torch.
$(VENV)/.installed-test: $(PY) pyproject.toml
	$(PIP) install --quiet -e ".[test]" torch==2.13.0
	touch $@

demo: $(VENV)/.installed-base
	$(VENV)/bin/pollinate simulate examples/quickstart

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks examples scripts
	$(VENV)/bin/ruff format --check src tests benchmarks examples scripts
	$(VENV)/bin/mypy

# Regenerates the checked-in protobuf code from proto/ (needs grpcio-tools, in [dev]).
proto: $(VENV)/.installed-dev
	$(PY) -m grpc_tools.protoc -Iproto --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--python_out=src/pollinate/serde/_proto --mypy_out=src/pollinate/serde/_proto \
		--grpc_python_out=src/pollinate/serde/_proto --mypy_grpc_out=src/pollinate/serde/_proto \
		proto/pollinate/v1/*.proto
	# protoc writes imports relative to proto/; the package lives under pollinate.serde._proto.
	sed -i 's/^from pollinate\.v1 import/from pollinate.serde._proto.pollinate.v1 import/' \
		src/pollinate/serde/_proto/pollinate/v1/*_grpc.py src/pollinate/serde/_proto/pollinate/v1/*_grpc.pyi
	rm -f src/pollinate/serde/_proto/pollinate/v1/envelope_pb2_grpc.py*

# Regenerates the `pollinate new` templates from their examples (numpy's, from
# examples/quickstart, is kept by hand); tests/cli/test_new.py checks they match.
templates: $(PY)
	for name in pytorch sklearn jax xgboost; do \
		$(PY) scripts/make_template.py examples/$$name src/pollinate/cli/templates/$$name; \
	done

# The simulation benchmark (not part of the tests): Pollinate, and Flower 1.42 in its own
# venv for comparison. Results go to benchmarks/results/simulation.md.
FLWR_VENV := benchmarks/.venv-flwr
FLWR_STAMP := $(FLWR_VENV)/.installed

$(FLWR_STAMP):
	$(PYTHON) -m venv $(FLWR_VENV)
	$(FLWR_VENV)/bin/pip install --quiet "flwr[simulation]==1.42.0" psutil
	touch $(FLWR_STAMP)

bench-flower-venv: $(FLWR_STAMP)

bench: $(VENV)/.installed-bench $(FLWR_STAMP)
	$(PY) benchmarks/simulation.py --flower $(FLWR_VENV)/bin/python

# Paper reproductions and micro-benchmarks; each writes benchmarks/results/<name>.*
bench-serde: $(VENV)/.installed-bench
	$(PY) benchmarks/serde.py

bench-fedprox: $(VENV)/.installed-bench
	$(PY) benchmarks/fedprox_synthetic.py

bench-byzantine: $(VENV)/.installed-bench
	$(PY) benchmarks/byzantine.py

# Flower's deployment engine on the same workload first: deployment.py puts its figures
# beside Pollinate's.
bench-deployment: $(VENV)/.installed-bench $(FLWR_STAMP)
	$(PY) benchmarks/flower_deployment.py
	$(PY) benchmarks/deployment.py
	$(PY) benchmarks/grpc_floor.py > benchmarks/results/grpc_floor.md

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
