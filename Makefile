# make demo: run the main job on the bundled real logs.  make test: run the test suite.
# Both create the virtual environment .venv on first use.

PYTHON ?= python3
VENV ?= .venv

.PHONY: demo test bench-ingest bench-train es-start es-stop clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	scripts/demo.sh

test: $(VENV)/.installed
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

bench-ingest: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/ingest_bench.py

bench-train: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/train_bench.py

es-start:
	scripts/elasticsearch.sh start

es-stop:
	scripts/elasticsearch.sh stop

clean:
	rm -rf demo/data demo/output
