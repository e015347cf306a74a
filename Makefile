# Pollinate's set-up and checks. `make demo` and `make test` are the two commands a new
# user needs; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint proto bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pollinate simulate examples/quickstart

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy

# Regenerates the checked-in protobuf code from proto/ (needs grpcio-tools, in [dev]).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--python_out=src/pollinate/serde/_proto --mypy_out=src/pollinate/serde/_proto \
		proto/pollinate/v1/*.proto

bench: $(STAMP)
	$(PY) benchmarks/simulation.py

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
