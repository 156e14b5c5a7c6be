# Two commands do everything on a fresh machine:
#   make book   set up, run the runs the book needs (skipping finished ones), build the HTML
#   make test   set up, run every test (unit, pipeline, notebooks, book build, browser)
# Data: set EASE_DATA_DIR to a WikiText-2 folder (train.txt, valid.txt, test.txt) when offline;
# otherwise the Hugging Face hub is used.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RESULTS ?= results
# Debian packages: a CJK font for Japanese pages and figures, Chromium for the browser test.
APT_PACKAGES := fonts-noto-cjk chromium

.PHONY: book test reproduce setup system-deps bench smoke clean

book: setup
	$(PY) -m ease.pipeline --book --results $(RESULTS)
	$(PY) book/build.py --results $(RESULTS)

test: setup
	$(PY) -m pytest

# The decoding benchmark as the book reads it: early exit with both batch schedules and lossless
# self-speculative decoding at several draft lengths, on the default and the 12-layer model and on the
# document's other cells (acceptance against alpha and setting).
BENCH_DECODE_BOOK := --drafts 1 2 4 8 --grouped --models default large A0.3 A0.5 B0.7

# Discard the canonical records and re-run every run from scratch, then rebuild the book.
# The decoding benchmark trains its models into RESULTS/bench (about 20 min on a quiet core) and needs
# quiet cores for its timings.
reproduce: setup
	rm -rf $(RESULTS)/runs $(RESULTS)/executed $(RESULTS)/analysis $(RESULTS)/bench
	$(PY) -m ease.pipeline --book --results $(RESULTS)
	$(PY) benchmarks/bench_decode.py $(BENCH_DECODE_BOOK) --json $(RESULTS)/bench/decode.json
	$(PY) book/build.py --results $(RESULTS)

# A tiny grid (seconds per run) to try the pipeline end to end.
smoke: setup
	$(PY) -m ease.pipeline --grid exp5-6 --smoke --results $(RESULTS)/smoke

# Print the training-throughput and decoding-speed tables (the book reads neither; the decoding benchmark
# trains its models into results/bench when their checkpoints are missing).
bench: setup
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_decode.py

setup: $(VENV)/.installed system-deps

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Installs the Debian packages where we can (root with apt-get); elsewhere says what is missing.
system-deps:
	@missing=""; \
	fc-list 2>/dev/null | grep -qi "Noto Sans CJK" || missing="$$missing fonts-noto-cjk"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "note: please install$$missing (Japanese figures need a CJK font; the browser test is skipped without chromium)"; \
	fi

clean:
	rm -rf _build .pytest_cache
