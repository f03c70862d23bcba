# Two commands set up a fresh machine: `make demo` builds and audits the demo model, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The MLflow tracking server for the tests, in a virtual environment of its own (the full mlflow pins pyarrow < 26).
MLFLOW_SERVER := $(VENV)/mlflow-server
MLFLOW_STAMP := $(MLFLOW_SERVER)/.installed

.PHONY: demo test bench system-deps clean

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(VENV)/bin/featureaudit demo --out reports

test: $(STAMP) $(MLFLOW_STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	for script in benchmarks/*.py; do TF_CPP_MIN_LOG_LEVEL=2 $(PY) $$script || exit 1; done

# WeasyPrint needs Pango; Debian's package is installed when the machine lacks it.
system-deps:
	@ldconfig -p | grep -q libpangoft2-1.0 || { apt-get update -qq && apt-get install -y -qq libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core; }

$(STAMP): pyproject.toml constraints.txt
	$(MAKE) system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,s3,mlflow]'
	touch $(STAMP)

$(MLFLOW_STAMP): constraints-mlflow-server.txt
	test -x $(MLFLOW_SERVER)/bin/python || python3 -m venv $(MLFLOW_SERVER)
	$(MLFLOW_SERVER)/bin/python -m pip install -q --upgrade pip
	$(MLFLOW_SERVER)/bin/python -m pip install -q -c constraints-mlflow-server.txt 'mlflow==3.17.2'
	touch $(MLFLOW_STAMP)

clean:
	rm -rf $(VENV) reports/*/ .pytest_cache
