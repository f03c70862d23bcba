# Two commands set up a fresh machine: `make demo` builds and audits the demo model, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench system-deps clean

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(VENV)/bin/featureaudit demo --out reports

test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q

bench: $(STAMP)
	for script in benchmarks/*.py; do TF_CPP_MIN_LOG_LEVEL=2 $(PY) $$script || exit 1; done

# WeasyPrint needs Pango; Debian's package is installed when the machine lacks it.
system-deps:
	@ldconfig -p | grep -q libpangoft2-1.0 || { apt-get update -qq && apt-get install -y -qq libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core; }

$(STAMP): pyproject.toml constraints.txt
	$(MAKE) system-deps
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,s3]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) reports/*/ .pytest_cache
