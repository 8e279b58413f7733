# The two commands of the README:
#   make demo   runs the main job on embedded defaults
#   make test   runs the test suite
# Both create .venv and install what they need (Debian packages too, when run as root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# the demo's speech synthesisers (it also needs PortAudio's library for sounddevice to import)
DEMO_DEB_PACKAGES := espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts libportaudio2
DEB_PACKAGES := systemd mosquitto espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts libportaudio2 tmux postgresql

.PHONY: test demo bench lint system-deps demo-deps apt-install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Debian packages the tests use (a real Mosquitto broker, espeak-ng voices, PortAudio, tmux, and
# PostgreSQL: the tests start their own server from /usr/lib/postgresql/<version>/bin, never the
# cluster the package may start on port 5432).
# Installed only when running as root and only when one is missing; otherwise a note says what to install.
system-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEB_PACKAGES)"

demo-deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEMO_DEB_PACKAGES)"

apt-install:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) \
	  || (sleep 5; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing); \
	else \
	  echo "note: missing Debian packages:$$missing (run 'sudo apt-get install$$missing')"; \
	fi

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench,train,demo]'
	touch $@

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

test: system-deps $(VENV)/.installed-dev
	$(PY) -m pytest -q

demo: demo-deps $(VENV)/.installed
	$(VENV)/bin/assistant demo

bench: $(VENV)/.installed-dev
	$(PY) bench/sda_seed.py --json

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
