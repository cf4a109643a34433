# The two commands: `make demo` and `make test`. Everything else is a step they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find proto -name '*.proto')
GENERATED := weldstream/v1/.generated

.PHONY: demo test lint proto bench clean

# Generated protobuf/gRPC modules land inside the weldstream namespace (weldstream.v1, weldstream.kserve),
# so they are built before the package is installed.
$(GENERATED): pyproject.toml $(PROTOS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q grpcio-tools==1.85.1
	$(PY) -m weldstream.protogen
	touch $@

$(INSTALLED): $(GENERATED)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps label-studio-sdk==2.1.2
	touch $@

proto: $(INSTALLED)

test: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: $(INSTALLED)
	$(VENV)/bin/weldstream demo $(DEMO_ARGS)

bench: $(INSTALLED)
	$(VENV)/bin/weldstream bench serve
	$(VENV)/bin/weldstream bench gem-step

clean:
	rm -rf $(VENV) weldstream/v1 weldstream/kserve build *.egg-info
